"""Helper shared by the command-line tests (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import click
from click.testing import CliRunner, Result


def invoke(command: click.Command, *args, ok: bool = True) -> Result:
    """Run ``command`` in this process with ``args`` (each turned into a string); unless
    ``ok`` is False, assert that it exited with status 0, showing its output if not."""
    result = CliRunner().invoke(command, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result
