"""The README's Python examples run as written, and its two commands are the ones CI runs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_examples_run(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what an example writes (sbi's sbi-logs/) stays out of the repository
    exec(compile(code, "README.md", "exec"), {})


def test_readme_has_the_two_commands_and_ci_runs_the_test_command():
    assert "pip install torch==2.13.0 && pip install -e . && pushforward fit\n" in README
    test_command = "python -m pytest -q -n 2"
    assert test_command in README
    assert test_command.replace("python ", "python3 ") in (ROOT / ".ci" / "run").read_text()
