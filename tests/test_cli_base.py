"""`pushforward fit --base normal|mixture|box`: recorded in config.json, checked by its schema,
and kept through evaluate, sample and resume."""

import json

import numpy as np
import pytest

from pushforward.cli import main
from pushforward.config import validate_config
from pushforward.experiment import load_run
from cli_helpers import invoke

TINY = ["--transforms", "1", "--hidden-features", "8", "--epochs", "1", "--quiet"]


@pytest.mark.parametrize("base", ["mixture", "box"])
def test_fit_with_a_base_records_it_and_evaluates_and_samples(base, tmp_path):
    out = tmp_path / base
    invoke(main, "fit", "--data", "moons", "--flow", "nsf", "--base", base, *TINY, "--out", out)
    config = json.loads((out / "config.json").read_text())
    assert config["flow_kwargs"]["base"] == base
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["log_likelihood_nats"])
    line = json.loads(invoke(main, "evaluate", out, "--json").output.strip().splitlines()[-1])
    assert line["log_likelihood_nats"] == pytest.approx(metrics["log_likelihood_nats"], rel=1e-6)
    invoke(main, "sample", out, "-n", 400, "-o", tmp_path / "s.npy")
    samples = np.load(tmp_path / "s.npy")
    if base == "box":  # inside the box that the run's last layer maps (0, 1)^2 to
        box = load_run(out)[0].transform[-1]
        assert (samples > box.shift.numpy()).all() and (samples < (box.shift + box.scale).numpy()).all()
        assert (samples.min(0) < box.shift.numpy() + 0.3 * box.scale.numpy()).all()  # and not squeezed in


def test_a_bad_base_is_refused_on_the_command_line_and_in_config_json(tmp_path):
    result = invoke(main, "fit", "--data", "moons", "--base", "cauchy", *TINY, "--out", tmp_path / "x", ok=False)
    assert result.exit_code != 0 and "cauchy" in result.output
    config = {"flow": "maf", "flow_kwargs": {"base": "cauchy"}, "data": {"name": "moons"},
              "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3}}
    with pytest.raises(ValueError, match="flow_kwargs: base must be one of normal, mixture, box, got 'cauchy'"):
        validate_config(config)
