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


def test_a_run_records_the_activation_its_made_computed_with(moons_run):
    """The formula of MADE's non-linearity is a recorded choice (issue 18), never a timing's."""
    config = json.loads((moons_run / "config.json").read_text())
    assert config["flow"] == "maf" and config["made_activations"] == ["ReLU"]


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


# --- reliability: run folders, option validation, file errors, memory (issue 23) -----------

def fit_moons(out, *extra, ok=True):
    return run("fit", "--data", "moons", *TINY, "--out", out, *extra, ok=ok)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(folder):
    """Hidden staging folders, locks and temporary files left in ``folder`` (recursively)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def test_a_folder_that_is_not_a_run_is_never_written(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text("notes")
    for extra in ([], ["--overwrite"]):
        assert "not a pushforward run" in bad("fit", "--data", "moons", *TINY, "--out", mine, *extra)
    assert [p.name for p in mine.iterdir()] == ["metrics.json"] and (mine / "metrics.json").read_text() == "notes"
    monkeypatch.chdir(tmp_path)
    assert "empty" in bad("fit", "--data", "moons", *TINY, "--out", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_overwrite_keeps_the_old_run_until_the_new_one_is_valid(moons_run, tmp_path):
    before = snapshot(moons_run)
    assert "--lr" in bad("fit", "--data", "moons", *TINY, "--out", moons_run, "--overwrite", "--lr", "-1")
    assert "--transforms" in bad("fit", "--data", "moons", *TINY, "--out", moons_run, "--overwrite",
                                 "--transforms", "0")
    # Training diverges (NaN/inf loss) before the first checkpoint: the old run stays whole.
    assert "loss became" in bad("fit", "--data", "moons", *TINY, "--out", moons_run, "--overwrite", "--lr", "1e30")
    assert snapshot(moons_run) == before and leftovers(tmp_path) == []
    fit_moons(moons_run, "--overwrite", "--seed", "1")
    assert json.loads((moons_run / "config.json").read_text())["train"]["seed"] == 1
    assert leftovers(tmp_path) == []


def test_a_failed_fit_leaves_nothing_that_blocks_a_rerun(tmp_path):
    out = tmp_path / "run"
    assert "loss became" in bad("fit", "--data", "moons", *TINY, "--out", out, "--lr", "1e30")
    assert not out.exists() and leftovers(tmp_path) == []
    fit_moons(out)
    run("fit", "--resume", out, "--epochs", "2", "--quiet")
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2


def test_two_fits_on_one_folder_one_gets_the_lock_error(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "pushforward.cli", "fit", "--data", "moons", "--transforms", "1",
                              "--hidden-features", "8", "--epochs", "1000", "--patience", "1000", "--quiet",
                              "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / ".run.lock").exists() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "-m", "pushforward.cli", "fit", "--data", "moons", *TINY,
                                 "--out", str(out), "--overwrite"], capture_output=True, text=True, timeout=120)
    finally:
        first.kill()
        first.communicate()
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"locked by process {first.pid}" in second.stderr, second.stderr


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".run.lock").write_text(f"{dead.pid}\n")
    fit_moons(tmp_path / "run")
    assert (tmp_path / "run" / "model.pt").is_file() and leftovers(tmp_path) == []


@pytest.mark.parametrize("command, option, value", [
    ("fit", "--epochs", "0"), ("fit", "--epochs", "-1"), ("fit", "--max-minutes", "-1"),
    ("fit", "--max-minutes", "nan"), ("fit", "--patience", "-1"), ("fit", "--threads", "-1"),
    ("fit", "--lr", "inf"), ("fit", "--lr", "nan"), ("fit", "--weight-decay", "-1"), ("fit", "--clip-grad", "-1"),
    ("fit", "--batch-size", "0"), ("fit", "--transforms", "0"), ("fit", "--hidden-features", "8,0"),
    ("fit", "--seed", "-1"), ("fit", "--nproc", "0"), ("vi", "--steps", "0"), ("vi", "--lr", "nan"),
    ("vi", "--beta0", "2"), ("vi", "--dim", "0"), ("vi", "--clip-grad", "0"), ("vae", "--lr", "-inf"),
    ("vae", "--warmup", "nan"), ("vae", "--max-minutes", "0"), ("sample", "-n", "0"),
])
def test_every_numeric_option_is_checked_before_anything_is_written(tmp_path, command, option, value):
    args = {"fit": ["--data", "moons", "--out", tmp_path / "run"], "vi": ["--target", "u1", "--out", tmp_path / "run"],
            "vae": ["--data-dir", tmp_path, "--out", tmp_path / "run"], "sample": [tmp_path, "-o", tmp_path / "s.npy"]}[command]
    line = bad(command, *args, option, value)
    assert option in line and "is not" in line, line
    assert not (tmp_path / "run").exists()


def test_library_sizes_and_training_arguments_are_checked():
    import pushforward as pf

    for make in (lambda: pf.MAF(features=0), lambda: pf.NSF(2, transforms=0), lambda: pf.PlanarFlow(0),
                 lambda: pf.RealNVP(2, hidden_features=(8, -1)), lambda: pf.NAF(2, units=0)):
        with pytest.raises(ValueError, match=r"(features|transforms|hidden_features|units) must be"):
            make()
    flow, x = pf.MAF(2, transforms=1, hidden_features=(4,)), torch.randn(20, 2)
    for name, value in (("epochs", -1), ("lr", float("nan")), ("clip_grad", -1.0), ("max_minutes", float("inf")),
                        ("weight_decay", -1e-3), ("batch_size", 0), ("patience", 0)):
        with pytest.raises(ValueError, match=f"{name} must be"):
            pf.fit(flow, x, **{name: value}, progress=False)
    with pytest.raises(ValueError, match="empty"):
        pf.evaluate(flow, torch.empty(0, 2))


def test_file_system_errors_are_one_line_naming_the_path(tmp_path, moons_run):
    (tmp_path / "afile").write_text("x")
    assert "afile" in bad("fit", "--data", "moons", *TINY, "--out", tmp_path / "afile" / "run")
    assert "afile" in bad("sample", moons_run, "-o", tmp_path / "afile" / "s.npy")
    run("sample", moons_run, "-n", 5, "-o", tmp_path / "s.npy")
    before = (tmp_path / "s.npy").read_bytes()
    assert "--overwrite" in bad("sample", moons_run, "-n", 7, "-o", tmp_path / "s.npy")
    assert (tmp_path / "s.npy").read_bytes() == before
    run("sample", moons_run, "-n", 7, "-o", tmp_path / "s.npy", "--overwrite")
    assert np.load(tmp_path / "s.npy").shape == (7, 2)


def test_a_full_disk_is_one_line_and_leaves_no_partial_files(tmp_path):
    """A file-size limit of 100 kB (EFBIG, "File too large") stops the write of model.pt (0.5 MB)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "pushforward.cli", "fit", "--data", "moons", "--transforms", "2",
                           "--hidden-features", "256,256", "--epochs", "1", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, preexec_fn=limit, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "model.pt: File too large" in done.stderr, done.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_corrupted_run_folders_name_the_bad_key(tmp_path, moons_run):
    config = json.loads((moons_run / "config.json").read_text())
    for key, change in (("data", lambda c: c.pop("data")), ("data.name", lambda c: c["data"].pop("name")),
                        ("train", lambda c: c.pop("train")), ("features", lambda c: c.update(features=-2))):
        broken = json.loads(json.dumps(config))
        change(broken)
        (moons_run / "config.json").write_text(json.dumps(broken))
        for command in (["evaluate", moons_run], ["fit", "--resume", moons_run]):
            assert f"config.json is corrupted: {key}:" in bad(*command)
    (moons_run / "config.json").write_text(json.dumps(config))
    state = torch.load(moons_run / "checkpoint.pt", weights_only=True)
    for key in ("optimizer", "best_model"):
        torch.save({k: v for k, v in state.items() if k != key}, moons_run / "checkpoint.pt")
        assert f"lacks {key}" in bad("fit", "--resume", moons_run)
    run("vi", "--target", "u1", "--steps", 2, "--log-z-samples", 100, "--quiet", "--out", tmp_path / "vi")
    assert "is a vi run" in bad("evaluate", tmp_path / "vi")


def test_sample_writes_in_chunks_and_refuses_what_cannot_fit(moons_run, tmp_path, monkeypatch):
    from pushforward.cli import density

    monkeypatch.setattr(density, "_CHUNK_NUMBERS", 64)  # 32 rows of moons at a time
    run("sample", moons_run, "-n", 1000, "-o", tmp_path / "s.npy")
    run("sample", moons_run, "-n", 1000, "-o", tmp_path / "s.csv")
    npy, csv = np.load(tmp_path / "s.npy"), np.loadtxt(tmp_path / "s.csv", delimiter=",")
    assert npy.shape == csv.shape == (1000, 2) and np.isfinite(npy).all()
    assert np.allclose(npy, csv, atol=1e-6)
    assert "needs about" in bad("sample", moons_run, "-n", 10**12, "-o", tmp_path / "s.png")
    header = tmp_path / "huge.npy"
    with open(header, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**11, 2)})
        f.write(b"\0" * 64)
    assert "needs about" in bad("fit", "--data", header, "--out", tmp_path / "a")
    assert "needs about" in bad("evaluate", moons_run, "--data", header)
    assert "needs about" in bad("fit", "--data", "moons", "--hidden-features", "100000000000", "--out", tmp_path / "b")
    assert "needs about" in bad("vi", "--target", "funnel", "--dim", "100000000", "--out", tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_run_on_a_file_works_from_another_folder(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    np.savetxt(tmp_path / "work" / "data.csv", np.random.default_rng(0).normal(size=(200, 2)), delimiter=",")
    monkeypatch.chdir(tmp_path / "work")
    run("fit", "--data", "data.csv", *TINY, "--out", "run")
    data = json.loads((tmp_path / "work" / "run" / "config.json").read_text())["data"]
    assert data["name"] == str(tmp_path / "work" / "data.csv") and data["display"] == "data.csv"
    monkeypatch.chdir(tmp_path / "elsewhere")
    run("evaluate", "../work/run")
    run("fit", "--resume", "../work/run", "--epochs", "2", "--quiet")


def test_evaluate_scores_every_row_of_a_file(moons_run, tmp_path):
    held = tmp_path / "held.csv"
    np.savetxt(held, np.random.default_rng(0).normal(size=(3648, 2)) * 0.5, delimiter=",")
    line = json.loads(run("evaluate", moons_run, "--data", held, "--json").output.strip().splitlines()[-1])
    assert line["n_examples"] == 3648 and line["scored"] == f"all 3648 rows of {held}"
    assert "all 3648 rows" in run("evaluate", moons_run, "--data", held).output
    assert "--split" in bad("evaluate", moons_run, "--data", held, "--split", "valid")
    assert json.loads(run("evaluate", moons_run, "--data", "moons", "--split", "valid", "--json")
                      .output.strip().splitlines()[-1])["n_examples"] == 2000


def test_resume_refuses_what_it_cannot_change_and_applies_the_rest(moons_run):
    line = bad("fit", "--resume", moons_run, "--flow", "nsf", "--lr", "0.1", "--data", "digits")
    assert "--flow" in line and "--lr" in line and "--data" in line
    assert "--out" in bad("fit", "--resume", moons_run, "--out", moons_run)
    run("fit", "--resume", moons_run, "--epochs", "2", "--max-minutes", "5", "--quiet")
    config = json.loads((moons_run / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["train"]["max_minutes"] == 5
    assert len(json.loads((moons_run / "metrics.json").read_text())["history"]) == 2


def test_a_vi_target_that_fails_is_one_line_with_its_file_and_line(tmp_path):
    raises = tmp_path / "raises.py"
    raises.write_text("import torch\n\ndef log_p(z):\n    return torch.log(z) / undefined_name\n")
    line = bad("vi", "--target", f"{raises}:log_p", "--dim", "2", "--steps", "2", "--out", tmp_path / "a")
    assert "NameError" in line and f"{raises}, line 4" in line
    broken = tmp_path / "broken.py"
    broken.write_text("def log_p(z)\n    return z\n")
    line = bad("vi", "--target", f"{broken}:log_p", "--dim", "2", "--steps", "2", "--out", tmp_path / "b")
    assert "SyntaxError" in line and f"{broken}, line 1" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


FIT_NUMBERS = ["--transforms", "--hidden-features", "--bins", "--epochs", "--batch-size", "--lr", "--weight-decay",
               "--clip-grad", "--patience", "--max-minutes", "--seed", "--threads"]  # --nproc > 1 starts processes


@pytest.fixture(scope="module")
def tiny_moons(tmp_path_factory):
    from pushforward.data import toy

    path = tmp_path_factory.mktemp("data") / "moons.csv"
    np.savetxt(path, toy("moons", 60).numpy(), delimiter=",")
    return path


def test_fit_options_give_a_one_line_error_or_a_trained_run(tiny_moons, tmp_path_factory):
    """Any value of any numeric option of `fit` (one at a time, the others tiny): exit 1 or 2 with
    one `Error:` line and no run folder, or a run whose epoch has a finite loss."""
    from hypothesis import given, settings, strategies as st

    values = st.one_of(st.integers(-3, 3).map(str), st.floats(width=32).map(repr),
                       st.sampled_from(["nan", "inf", "-inf", "1e40", "2.5", "abc", "", "3,0", "1x2"]))
    threads = torch.get_num_threads()

    @settings(max_examples=20, deadline=None, database=None)
    @given(option=st.sampled_from(FIT_NUMBERS), value=values)
    def check(option, value):
        out = tmp_path_factory.mktemp("run") / "run"
        base = {"--transforms": "1", "--hidden-features": "4", "--bins": "3", "--epochs": "1", "--batch-size": "16"}
        args = [a for k, v in {**base, option: value}.items() for a in (k, v)]
        result = run("fit", "--data", tiny_moons, "--flow", "nsf", *args, "--quiet", "--out", out, ok=False)
        if result.exit_code == 0:
            history = json.loads((out / "metrics.json").read_text())["history"]
            assert history and all(np.isfinite(h["train_loss"]) for h in history)
        else:
            assert result.exit_code in (1, 2) and "Traceback" not in result.output and result.exception is not None
            assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1, result.output
            assert not out.exists()

    try:
        check()
    finally:
        torch.set_num_threads(threads)


def test_a_swap_cut_short_is_completed_by_the_next_writer(moons_run, tmp_path):
    """A writer killed between moving the old run aside and moving the new one in (publish)."""
    new, old = tmp_path / ".moons.new", tmp_path / ".moons.old"
    moons_run.rename(old)
    fit_moons(new, "--seed", "3")
    assert not moons_run.exists()
    # The next writer, under the lock, completes the swap; then finds the run there.
    assert "already holds a run" in bad("fit", "--data", "moons", *TINY, "--out", moons_run)
    assert json.loads((moons_run / "config.json").read_text())["train"]["seed"] == 3
    assert leftovers(tmp_path) == []


def test_a_solve_that_does_not_converge_is_a_one_line_error():
    """ConvergenceError (a numerical inverse, an ODE solve over its budget) reaches the user as
    one line, like the library's other documented errors."""
    import click

    from pushforward.cli.common import one_line_errors
    from pushforward.transforms import ConvergenceError

    @click.command()
    @one_line_errors
    def stuck():
        raise ConvergenceError("fixed-point inverse did not converge in 2 iterations\n(details)")

    result = invoke(stuck, ok=False)
    assert result.exit_code == 1
    assert result.output.strip() == "Error: fixed-point inverse did not converge in 2 iterations"


def test_a_built_in_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    """`pushforward fit` (digits, a MAF) works from a directory that holds a folder named
    `digits`: the CLI and the loader read the name the same way (pf.data.is_image_folder)."""
    (tmp_path / "digits").mkdir()
    monkeypatch.chdir(tmp_path)
    run("fit", "--data", "digits", "--flow", "maf", *TINY, "--out", tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["images"] is False
