"""End-to-end runs of the `pushforward` command in temporary folders."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pushforward.cli import main
from pushforward.flows import PRESETS, preset_options
from cli_helpers import invoke

TINY = ["--transforms", "1", "--hidden-features", "8", "--epochs", "1", "--quiet"]


def run(*args, ok=True):
    return invoke(main, *args, ok=ok)


@pytest.fixture
def moons_run(tmp_path):
    out = tmp_path / "moons"
    run("fit", "--data", "moons", "--flow", "maf", *TINY, "--out", out)
    return out


def test_fit_writes_a_complete_run_folder(moons_run):
    for name in ("config.json", "model.pt", "checkpoint.pt", "metrics.json", "learning_curve.png", "density.png"):
        assert (moons_run / name).is_file(), name
    metrics = json.loads((moons_run / "metrics.json").read_text())
    assert metrics["n_examples"] == 2000 and metrics["split"] == "test"
    assert np.isfinite(metrics["log_likelihood_nats"]) and metrics["stderr_nats"] > 0


def test_fit_evaluate_sample_round_trip(moons_run, tmp_path):
    result = run("evaluate", moons_run, "--json")
    line = json.loads(result.output.strip().splitlines()[-1])
    for key in ("log_likelihood_nats", "stderr_nats", "n_examples", "seconds"):
        assert key in line
    saved = json.loads((moons_run / "metrics.json").read_text())
    assert line["log_likelihood_nats"] == pytest.approx(saved["log_likelihood_nats"], rel=1e-6)
    for suffix in ("npy", "csv", "png"):
        run("sample", moons_run, "-n", 50, "-o", tmp_path / f"s.{suffix}")
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    assert np.loadtxt(tmp_path / "s.csv", delimiter=",").shape == (50, 2)


@pytest.mark.parametrize("flow", sorted(PRESETS))
def test_every_preset_fits_from_the_command_line(flow, tmp_path):
    hidden = ["--hidden-features", "8"] if "hidden_features" in preset_options(flow) else []
    result = run("fit", "--data", "moons", "--flow", flow, "--transforms", "2", *hidden, "--epochs", "1", "--quiet",
                 "--out", tmp_path / flow, "--json")
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert np.isfinite(metrics["log_likelihood_nats"]) and metrics["n_examples"] == 2000


def test_image_data_report_bits_per_dim_and_write_sample_grid(tmp_path):
    out = tmp_path / "digits"
    result = run("fit", "--data", "digits", *TINY, "--out", out, "--json")
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["bits_per_dim"] == pytest.approx(-metrics["log_likelihood_nats"] / (64 * np.log(2)))
    assert (out / "samples.png").is_file()
    run("sample", out, "-n", 16, "-o", tmp_path / "grid.png")


def test_fit_compile_is_kept_for_resume(tmp_path):
    out = tmp_path / "compiled"
    run("fit", "--data", "moons", "--flow", "nsf", "--bins", "4", *TINY, "--compile", "--out", out)
    assert json.loads((out / "config.json").read_text())["train"]["compile"] is True
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["log_likelihood_nats"])


def test_fit_without_out_names_where_it_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("fit", *TINY)
    assert "wrote runs/digits-maf/" in result.output
    assert (tmp_path / "runs" / "digits-maf" / "model.pt").is_file()


def test_user_csv_with_separate_test_file(tmp_path):
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "train.csv", rng.normal(size=(200, 3)), delimiter=",")
    np.savetxt(tmp_path / "test.csv", rng.normal(size=(50, 3)), delimiter=",")
    result = run("fit", "--data", tmp_path / "train.csv", "--test-file", tmp_path / "test.csv", *TINY,
                 "--out", tmp_path / "run", "--json")
    assert json.loads(result.output.strip().splitlines()[-1])["n_examples"] == 50


def bad(*args):
    result = run(*args, ok=False)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_bad_inputs_give_one_line_errors(tmp_path, moons_run):
    nan = tmp_path / "nan.csv"
    nan.write_text("1,2\n3,nan\n" + "1,2\n" * 20)
    assert "NaN" in bad("fit", "--data", nan, "--out", tmp_path / "a")
    inf = tmp_path / "inf.csv"
    inf.write_text("1,2\n3,inf\n" + "1,2\n" * 20)
    assert "infinite" in bad("fit", "--data", inf, "--out", tmp_path / "b")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty" in bad("fit", "--data", empty, "--out", tmp_path / "c").lower()
    assert "unknown data set" in bad("fit", "--data", "no-such-data", "--out", tmp_path / "d")
    assert "no-such-flow" in bad("fit", "--flow", "no-such-flow")
    three = tmp_path / "three.npy"
    np.save(three, np.random.default_rng(0).normal(size=(30, 3)))
    assert "3 columns" in bad("evaluate", moons_run, "--data", three)
    assert "not found" in bad("evaluate", tmp_path / "no-run")
    assert "mnist" in bad("fit", "--data", "mnist", "--data-dir", tmp_path / "nothing-here", "--out", tmp_path / "e")
    for name in ("a", "b", "c", "d", "e"):
        assert not (tmp_path / name / "model.pt").exists()


def test_corrupted_run_is_reported_and_existing_results_are_untouched(tmp_path, moons_run):
    before = (moons_run / "model.pt").read_bytes()
    assert "already holds a run" in bad("fit", "--data", "moons", "--out", moons_run)
    assert (moons_run / "model.pt").read_bytes() == before
    (moons_run / "model.pt").write_bytes(b"not a checkpoint")
    assert "corrupted" in bad("evaluate", moons_run)
    assert "corrupted" in bad("sample", moons_run, "-n", 5, "-o", tmp_path / "x.npy")
    (moons_run / "config.json").write_text("{ broken")
    assert "corrupted" in bad("evaluate", moons_run)


def test_an_option_the_preset_does_not_take_is_an_error(tmp_path):
    assert "--bins does not apply to --flow maf" in bad("fit", "--flow", "maf", "--bins", "4", "--out", tmp_path / "x")


def test_fit_help_lists_every_preset():
    text = run("fit", "--help").output
    for name in PRESETS:
        assert name in text


def test_help_explains_every_option():
    for command in ("fit", "evaluate", "sample"):
        text = run(command, "--help").output
        for param in main.commands[command].params:
            if param.param_type_name == "option":
                assert param.opts[-1] in text
                assert param.help, f"{command} {param.opts[-1]} has no help"


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pushforward.cli", "fit", "--data", "digits", "--epochs", "400", "--patience",
           "400", "--hidden-features", "64", "--quiet", "--out", str(out)]
    # Ctrl-C's default action in the child: a test run started in the background (`cmd &`) has SIGINT
    # ignored, and the child would inherit that and never stop.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "pushforward fit --resume" in err and "Traceback" not in err
    done = json.loads(subprocess.run(
        [sys.executable, "-m", "pushforward.cli", "fit", "--resume", str(out), "--epochs", "3", "--json", "--quiet"],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    assert done["n_examples"] == 181
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert os.path.getsize(out / "model.pt") > 0


def test_a_constant_column_still_gives_metrics_without_the_gaussian(tmp_path):
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(size=200), rng.normal(size=200), np.ones(200)])
    np.save(tmp_path / "const.npy", data)
    result = run("fit", "--data", tmp_path / "const.npy", *TINY, "--out", tmp_path / "run", "--json")
    assert np.isfinite(json.loads(result.output.strip().splitlines()[-1])["log_likelihood_nats"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["gaussian_baseline"] is None


def test_evaluate_sample_and_vi_run_on_the_chosen_device(moons_run, tmp_path, device):
    """`--device` of the test run (pytest --device cuda, or cpu): same metrics, samples back on the CPU."""
    on_device = json.loads(run("evaluate", moons_run, "--json", "--device", device).output.strip().splitlines()[-1])
    saved = json.loads((moons_run / "metrics.json").read_text())
    assert on_device["log_likelihood_nats"] == pytest.approx(saved["log_likelihood_nats"], rel=1e-5)
    run("sample", moons_run, "-n", 10, "-o", tmp_path / "s.npy", "--device", device)
    assert np.load(tmp_path / "s.npy").shape == (10, 2)
    gauss = tmp_path / "gauss3.py"
    gauss.write_text("def log_p(z):\n    return -0.5 * z.square().sum(-1)\n")
    result = run("vi", "--target", f"{gauss}:log_p", "--dim", "3", "--flow", "iaf", "--transforms", "1",
                 "--hidden-features", "8", "--steps", "5", "--log-z-samples", "200", "--quiet", "--json",
                 "--device", device, "--out", tmp_path / "vi")
    assert np.isfinite(json.loads(result.output.strip().splitlines()[-1])["log_z"])


def test_a_device_this_machine_lacks_is_a_one_line_error(moons_run, tmp_path):
    lacking = [(name, label) for name, label, present in (("cuda", "CUDA", torch.cuda.is_available()),
                                                          ("mps", "MPS", torch.backends.mps.is_available()))
               if not present]
    commands = (["evaluate", moons_run], ["sample", moons_run, "-o", tmp_path / "x.npy"],
                ["fit", "--data", "moons", "--out", tmp_path / "fit"],
                ["vi", "--target", "u1", "--out", tmp_path / "vi"],
                ["vae", "--data-dir", tmp_path, "--out", tmp_path / "vae"])
    for name, label in lacking:
        for command in commands:
            assert f"--device {name}: {label} is not available on this machine" in bad(*command, "--device", name)
    assert "unknown device" in bad("evaluate", moons_run, "--device", "nonsense")
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "fit").exists() and not (tmp_path / "vi").exists()
    assert not (tmp_path / "vae").exists()
