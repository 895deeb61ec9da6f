"""Data-parallel training on 2 processes (gloo, CPU) against 1 process, and `pushforward fit --nproc`.

Each test that starts processes costs a few seconds of imports per process, so the library
checks share one launch.
"""

import json
import os
from pathlib import Path

import pytest
import torch

import pushforward as pf
from pushforward import distributed
from pushforward.cli import main
from cli_helpers import invoke

# 65 rows in batches of 16: the last mini-batch has one row, so one process's shard is empty.
ROWS, BATCH = 65, 16


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, 0.3], [0.0, 0.0, 0.5]], dtype=torch.float64)
    x = torch.randn(ROWS + 20, 3, generator=g, dtype=torch.float64) @ mix + 1
    return x[:ROWS], x[ROWS:]


def _flow(normalization: str) -> pf.Flow:
    torch.manual_seed(1)
    return pf.MAF(3, transforms=2, hidden_features=(8,), normalization=normalization)


def _fit(flow, train, valid, batch_size=BATCH, **kwargs):
    return pf.fit(flow, train, valid, batch_size=batch_size, dtype=torch.float64, progress=False, **kwargs)


def _state(flow) -> dict:
    return {k: v.clone() for k, v in flow.state_dict().items()}


def _job(folder: str, resume: bool) -> dict:
    """The library checks, run by 1 process or by each of 2; returns what process 0 ends with."""
    train, valid = _data()
    folder = Path(folder)
    out = {}
    # ActNorm (data-dependent initialisation) flow, 3 epochs, early stopping off.
    flow = _flow("act")
    if resume:
        # A checkpoint path per process: only process 0's may be written. Then all resume from it.
        _fit(flow, train, valid, epochs=2, patience=None, checkpoint=folder / f"checkpoint-{distributed.rank()}.pt")
        flow = _flow("act")
        result = _fit(flow, train, valid, epochs=3, patience=None, checkpoint=folder / "checkpoint-0.pt", resume=True)
    else:
        result = _fit(flow, train, valid, epochs=3, patience=None)
    out["act"] = result.history, _state(flow)
    # BatchNorm flow: its moments, gradients and running averages are those of the global batch.
    flow = _flow("batch")
    result = _fit(flow, train, valid, epochs=1)
    out["batch"] = result.history, _state(flow)
    try:
        _fit(_flow("act"), train, valid, epochs=1, batch_size=15)
    except ValueError as e:
        out["error"] = str(e)
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    return folder, distributed.launch(_job, 2, (str(folder), True), timeout=120)


@pytest.fixture(scope="module")
def one_process():
    return _job("", resume=False)


def _close(a: dict, b: dict, rtol: float, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=rtol, atol=atol, msg=k)


def _same_history(a: list[dict], b: list[dict], rtol: float) -> None:
    assert [h["epoch"] for h in a] == [h["epoch"] for h in b]
    for ha, hb in zip(a, b):
        for key in ("train_loss", "valid_log_likelihood"):
            assert ha[key] == pytest.approx(hb[key], rel=rtol), key


def test_two_processes_train_as_one_with_the_same_global_batch(two_processes, one_process):
    """Same weights and history as one process, through ActNorm's initialisation, an empty shard
    and a resume; the processes' rounding differs only in the order of sums (float64)."""
    _, got = two_processes
    want = one_process
    history, state = got["act"]
    _same_history(history, want["act"][0], rtol=1e-9)
    _close(state, want["act"][1], rtol=1e-7, atol=1e-9)


def test_batch_norm_uses_the_moments_of_the_global_batch(two_processes, one_process):
    """Per-process moments would change the running averages and the loss at the 1e-2 level."""
    _, got = two_processes
    want = one_process
    _same_history(got["batch"][0], want["batch"][0], rtol=1e-6)
    # Below 1e-6: MAF's first feature after a batch norm has a shift whose gradient is zero up to
    # rounding, which Adam scales by lr / eps = 1e5 (one process alone shows this on 1e-15 noise).
    _close(got["batch"][1], want["batch"][1], rtol=1e-6, atol=1e-6)


def test_only_process_zero_writes_the_checkpoint(two_processes):
    folder, _ = two_processes
    assert sorted(os.listdir(folder)) == ["checkpoint-0.pt"]
    assert len(torch.load(folder / "checkpoint-0.pt", weights_only=True)["history"]) == 3


def test_a_batch_that_the_processes_do_not_divide_is_an_error(two_processes):
    _, got = two_processes
    assert "batch size 15 must be a positive multiple of the 2 processes" in got["error"]
    with pytest.raises(ValueError, match="at least 1"):
        distributed.launch(_job, 0)


def _fails_on_rank_one() -> None:
    if distributed.rank() == 1:
        raise ValueError("rank 1 failed")
    distributed.barrier()


def test_an_error_in_a_process_is_raised_in_the_launcher():
    with pytest.raises(ValueError, match="rank 1 failed"):
        distributed.launch(_fails_on_rank_one, 2, timeout=60)


def cli(*args, ok=True):
    return invoke(main, *args, ok=ok)


def test_fit_nproc_writes_the_run_and_resumes(tmp_path):
    out = tmp_path / "run"
    tiny = ["--data", "moons", "--transforms", "1", "--hidden-features", "8", "--batch-size", "500", "--quiet"]
    cli("fit", *tiny, "--epochs", "1", "--nproc", "2", "--out", out)
    for name in ("config.json", "model.pt", "checkpoint.pt", "metrics.json", "density.png"):
        assert (out / name).is_file(), name
    cli("fit", "--resume", out, "--epochs", "2", "--nproc", "2", "--quiet")
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["processes"] == 2
    assert cli("evaluate", out, "--json").exit_code == 0


def test_bad_nproc_is_a_one_line_error(tmp_path):
    for args, message in ((["--nproc", "0"], "--nproc': '0' is not an integer >= 1"),
                          (["--nproc", "2", "--batch-size", "33"], "multiple of the number of processes, 2")):
        result = cli("fit", "--data", "moons", *args, "--out", tmp_path / "x", ok=False)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
