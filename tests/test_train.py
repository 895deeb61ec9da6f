"""Fitting flows by maximum likelihood (:func:`pushforward.fit`) and the training engine under it
(:mod:`pushforward.engine`): learning, best weights, early stopping, the time budget, NaN losses,
Ctrl-C and resuming, TensorBoard scalars, and evaluation."""

import math
import shutil

import pytest
import torch

import pushforward as pf
from cli_helpers import invoke, tensorboard_scalars


@pytest.fixture(scope="module")
def moons():
    from sklearn.datasets import make_moons

    x, _ = make_moons(4000, noise=0.05, random_state=0)
    x = torch.tensor(x, dtype=torch.float32)
    train, valid = x[:3000], x[3000:]
    mean, std = train.mean(0), train.std(0)
    return (train - mean) / std, (valid - mean) / std


def baseline(valid: torch.Tensor) -> float:
    return float(pf.StandardNormal(2).log_prob(valid).mean())


def small_maf(seed: int = 0) -> pf.Flow:
    torch.manual_seed(seed)
    return pf.MAF(2, transforms=3, hidden_features=(32,))


def test_fit_learns_moons(moons):
    train, valid = moons
    torch.manual_seed(0)
    flow = pf.MAF(2, transforms=5, hidden_features=(64, 64))
    result = pf.fit(flow, train, valid, epochs=10, batch_size=128, lr=3e-3, max_minutes=0.5, progress=False)
    assert result.best_valid > baseline(valid) + 0.5, (result.best_valid, baseline(valid))
    assert not flow.training
    assert len(result.history) == result.history[-1]["epoch"]


def test_fit_compiled_trains_like_eager(moons):
    """compile=True goes through torch.compile and ends where eager training does, up to rounding."""
    train, valid = moons
    runs = []
    for compile in (False, True):
        torch.manual_seed(0)
        flow = pf.NSF(2, transforms=2, hidden_features=(16,), bins=4)
        counter = torch._dynamo.utils.counters["stats"]["calls_captured"]
        result = pf.fit(flow, train[:256], valid, epochs=2, batch_size=128, patience=None, progress=False,
                        compile=compile)
        assert (torch._dynamo.utils.counters["stats"]["calls_captured"] > counter) == compile
        runs.append(result.best_valid)
    assert runs[1] == pytest.approx(runs[0], rel=1e-4)


def test_fit_keeps_the_best_weights(moons):
    train, valid = moons
    # 100 training points and a large learning rate overfit: the last epoch is not the best
    flow = small_maf()
    result = pf.fit(flow, train[:100], valid, epochs=30, batch_size=25, lr=2e-2, patience=None, progress=False)
    scores = [h["valid_log_likelihood"] for h in result.history]
    assert result.stopped == "epochs" and len(scores) == 30
    assert result.best_valid == max(scores) and result.best_epoch == scores.index(max(scores)) + 1
    assert result.best_epoch < 30, "no overfitting: the test could not tell best from last"
    assert pf.evaluate(flow, valid).mean == pytest.approx(result.best_valid, rel=1e-6, abs=1e-6)
    assert pf.evaluate(flow, valid).mean != pytest.approx(scores[-1], abs=1e-4)


def test_fit_stops_early(moons):
    train, valid = moons
    flow = small_maf()
    result = pf.fit(flow, train[:100], valid, epochs=100, batch_size=25, lr=2e-2, patience=3, progress=False)
    assert result.stopped == "early stopping"
    assert len(result.history) == result.best_epoch + 3


def test_fit_respects_the_time_budget(moons, monkeypatch):
    train, valid = moons
    flow = small_maf()
    counter = InterruptOnCall(flow.log_prob, n=0)  # never interrupts; counts the calls
    monkeypatch.setattr(flow, "log_prob", counter)
    result = pf.fit(flow, train, valid, epochs=1000, batch_size=32, max_minutes=1e-6, progress=False)
    assert result.stopped == "time budget"
    assert len(result.history) == 1
    # the budget is checked after every step: one training step, then one validation pass
    assert counter.calls == 2
    assert not flow.training


def test_fit_in_float64(moons):
    train, valid = moons
    flow = small_maf()
    result = pf.fit(flow, train.double(), valid.double(), epochs=3, batch_size=128, lr=3e-3,
                    dtype=torch.float64, progress=False)
    assert all(p.dtype == torch.float64 for p in flow.parameters())
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["valid_log_likelihood"]) for h in result.history)
    assert result.best_valid > baseline(valid)
    assert flow.log_prob(valid.double()).dtype == torch.float64


def test_fit_with_context():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(2000, 1, generator=g)
    x = torch.cat([c + 0.1 * torch.randn(2000, 1, generator=g), torch.randn(2000, 1, generator=g)], -1)
    torch.manual_seed(0)
    flow = pf.MAF(2, 1, transforms=2, hidden_features=(32,))
    result = pf.fit(flow, (x[:1500], c[:1500]), (x[1500:], c[1500:]), epochs=8, lr=3e-3, progress=False)
    # knowing the context, x_0 has a standard deviation of 0.1: far above the unconditional fit
    assert result.best_valid > float(pf.StandardNormal(2).log_prob(x[1500:]).mean()) + 0.5


def test_fit_raises_on_a_nan_loss(moons, monkeypatch):
    train, valid = moons
    flow = small_maf()
    original = flow.log_prob
    calls = []

    def log_prob(x, context=None):
        calls.append(1)
        out = original(x, context)
        return out * math.nan if len(calls) == 3 else out

    monkeypatch.setattr(flow, "log_prob", log_prob)
    with pytest.raises(ValueError, match="loss became nan"):
        pf.fit(flow, train, valid, epochs=2, batch_size=500, progress=False)


def test_fit_rejects_bad_arguments(moons, tmp_path):
    train, valid = moons
    with pytest.raises(ValueError, match="schedule"):
        pf.fit(small_maf(), train, valid, schedule="step", progress=False)
    with pytest.raises(ValueError, match="empty"):
        pf.fit(small_maf(), train[:0], valid, progress=False)
    with pytest.raises(FileNotFoundError):
        pf.fit(small_maf(), train, valid, checkpoint=tmp_path / "missing.pt", resume=True, progress=False)


class InterruptOnCall:
    """Stands in for ``flow.log_prob`` and raises KeyboardInterrupt on its n-th call (Ctrl-C)."""

    def __init__(self, log_prob, n: int):
        """n = 0 never interrupts."""
        self.log_prob, self.n, self.calls = log_prob, n, 0

    def __call__(self, x, context=None):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.log_prob(x, context)


def fit_catching_interrupts(*args, **kwargs) -> pf.FitResult:
    try:
        return pf.fit(*args, **kwargs)
    except KeyboardInterrupt:
        pytest.fail("fit let the KeyboardInterrupt through")


def interrupted_fit(flow, moons, monkeypatch, path, call: int) -> pf.FitResult:
    """fit(epochs=5, batch 500) of ``flow`` on the moons, interrupted at its ``call``-th log_prob."""
    train, valid = moons
    monkeypatch.setattr(flow, "log_prob", InterruptOnCall(flow.log_prob, call))
    result = fit_catching_interrupts(flow, train, valid, epochs=5, batch_size=500, checkpoint=path, progress=False)
    monkeypatch.undo()
    return result


def test_fit_interrupted_writes_a_checkpoint_and_resumes(moons, monkeypatch, tmp_path):
    train, valid = moons
    path = tmp_path / "run" / "checkpoint.pt"
    options = dict(batch_size=500, lr=3e-3, progress=False, checkpoint=path)
    flow = small_maf()
    # 6 training steps and 1 validation pass per epoch: call 10 is step 3 of epoch 2
    monkeypatch.setattr(flow, "log_prob", InterruptOnCall(flow.log_prob, 10))
    first = fit_catching_interrupts(flow, train, valid, epochs=5, **options)
    monkeypatch.undo()
    assert first.stopped == "interrupted"
    assert [h["epoch"] for h in first.history] == [1]
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and state["history"] == first.history
    assert state["best_valid"] == first.best_valid and state["best_epoch"] == 1
    for key, value in flow.state_dict().items():  # the weights at the interruption
        torch.testing.assert_close(state["model"][key], value, atol=0, rtol=0)
    snapshot = tmp_path / "interrupted.pt"
    shutil.copy(path, snapshot)

    # resume on the interrupted flow: the history continues, epochs are counted from the start
    resumed = pf.fit(flow, train, valid, epochs=3, resume=True, **options)
    assert resumed.stopped == "epochs"
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == first.history[0]
    assert resumed.best_valid == max(h["valid_log_likelihood"] for h in resumed.history)

    # resume into a freshly built flow: the same run, so the model and optimiser were restored
    fresh = small_maf(seed=1)
    again = pf.fit(fresh, train, valid, epochs=3, resume=True, **{**options, "checkpoint": snapshot})
    for a, b in zip(again.history, resumed.history):
        assert a["valid_log_likelihood"] == pytest.approx(b["valid_log_likelihood"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)


def test_fit_interrupted_between_epochs_then_resumed_equals_an_uninterrupted_run(moons, monkeypatch, tmp_path):
    """Model, optimiser state, history and the order of the mini-batches all carry over."""
    train, valid = moons
    options = dict(epochs=3, batch_size=500, lr=3e-3, patience=None, progress=False)
    reference = pf.fit(small_maf(), train, valid, **options)
    flow = small_maf()
    path = tmp_path / "checkpoint.pt"
    # 7 calls per epoch (6 steps, 1 validation pass): call 15 is the first step of epoch 3
    monkeypatch.setattr(flow, "log_prob", InterruptOnCall(flow.log_prob, 15))
    first = fit_catching_interrupts(flow, train, valid, checkpoint=path, **options)
    monkeypatch.undo()
    assert first.stopped == "interrupted" and len(first.history) == 2
    resumed = pf.fit(small_maf(seed=1), train, valid, checkpoint=path, resume=True, **options)
    assert resumed.stopped == reference.stopped == "epochs"
    assert len(resumed.history) == 3
    for a, b in zip(resumed.history, reference.history):
        assert a["epoch"] == b["epoch"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["valid_log_likelihood"] == pytest.approx(b["valid_log_likelihood"], rel=1e-6)
    assert resumed.best_valid == pytest.approx(reference.best_valid, rel=1e-6)


def test_fit_resumed_with_nothing_left_restores_the_best_weights(moons, monkeypatch, tmp_path):
    train, valid = moons
    path = tmp_path / "checkpoint.pt"
    first = interrupted_fit(small_maf(), moons, monkeypatch, path, call=10)
    assert first.stopped == "interrupted"
    fresh = small_maf(seed=1)
    result = pf.fit(fresh, train, valid, epochs=1, batch_size=500, checkpoint=path, resume=True, progress=False)
    assert len(result.history) == 1 and result.best_epoch == 1
    assert pf.evaluate(fresh, valid).mean == pytest.approx(first.best_valid, rel=1e-6, abs=1e-6)


def test_fit_resumes_a_checkpoint_whose_optimiser_state_does_not_match(moons, monkeypatch, tmp_path):
    """A checkpoint from before MADE's packed storage holds one Adam state per MADE layer: the
    weights and history resume, Adam starts afresh, with a warning."""
    train, valid = moons
    path = tmp_path / "checkpoint.pt"
    flow = small_maf()
    first = interrupted_fit(flow, moons, monkeypatch, path, call=10)
    state = torch.load(path, weights_only=True)
    layers = [torch.nn.Linear(2, 2) for _ in range(3)]
    state["optimizer"] = torch.optim.Adam([p for layer in layers for p in layer.parameters()]).state_dict()
    torch.save(state, path)
    with pytest.warns(UserWarning, match="fresh Adam state"):
        resumed = pf.fit(flow, train, valid, epochs=len(first.history) + 1, batch_size=500, checkpoint=path,
                         resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == list(range(1, len(first.history) + 2))


def test_fit_interrupted_in_the_first_epoch(moons, monkeypatch, tmp_path):
    train, valid = moons
    path = tmp_path / "checkpoint.pt"
    flow = small_maf()
    first = interrupted_fit(flow, moons, monkeypatch, path, call=2)
    assert first.stopped == "interrupted" and first.history == []
    resumed = pf.fit(flow, train, valid, epochs=2, batch_size=500, checkpoint=path, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_log_likelihoods_and_evaluate(moons):
    _, valid = moons
    flow = small_maf()
    values = pf.log_likelihoods(flow, valid, batch_size=300)
    assert values.shape == (1000,)
    torch.testing.assert_close(values, flow.log_prob(valid).detach())
    ev = pf.evaluate(flow, valid)
    assert ev.n == 1000 and ev.mean == pytest.approx(float(values.double().mean()))
    assert ev.stderr == pytest.approx(float(values.double().std()) / math.sqrt(1000))


# --- the engine ----------------------------------------------------------------------------

def scripted(scores: list[float], maximize: bool = True, **options) -> tuple[torch.nn.Linear, pf.FitResult, list]:
    """engine.train of a linear model on a fixed least-squares loss, whose validation figures are
    ``scores`` in turn; returns the model, the result and the weights after each epoch."""
    from pushforward.engine import Loss, Step, Validation, train

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    weights = []

    def step(forward, rows):
        loss = (forward(x[rows]) - y[rows]).square().mean()
        return Step(loss=loss, total=loss.item() * len(rows), count=len(rows))

    def score(entry):
        weights.append(model.weight.detach().clone())
        return scores[entry["epoch"] - 1]

    result = train(model, Loss(step, lambda epoch: torch.arange(8).split(4)), Validation(score, "figure", maximize),
                   lr=0.1, progress=False, **{"epochs": len(scores), **options})
    return model, result, weights


@pytest.mark.parametrize("maximize", [True, False])
def test_engine_stops_early_and_restores_the_best_weights(maximize):
    sign = 1 if maximize else -1
    scores = [sign * s for s in (1.0, 3.0, 2.0, 2.5, 2.9, 5.0)]
    model, result, weights = scripted(scores, maximize, patience=3)
    assert result.stopped == "early stopping" and len(result.history) == 5
    assert result.best_epoch == 2 and result.best_valid == sign * 3.0
    assert [h["figure"] for h in result.history] == scores[:5]
    torch.testing.assert_close(model.weight, weights[1], rtol=0, atol=0)
    assert not torch.equal(weights[1], weights[-1]) and not model.training
    assert result.steps == 10


def test_engine_time_budget_closes_the_epoch_after_one_step():
    model, result, weights = scripted([1.0] * 5, max_minutes=1e-9)
    assert result.stopped == "time budget" and result.steps == 1 and len(result.history) == 1
    assert result.history[0]["figure"] == 1.0 and len(weights) == 1


def test_engine_without_validation_keeps_the_last_weights():
    from pushforward.engine import Loss, Step, train

    model = torch.nn.Linear(1, 1)
    step = lambda forward, i: Step(loss=forward(torch.ones(1, 1)).sum(), total=float(i), count=1, last={"i": i})
    result = train(model, Loss(step, lambda epoch: range(3 * epoch, 3 * epoch + 3)), epochs=2, lr=0.5,
                   patience=1, progress=False)
    assert result.stopped == "epochs" and result.best_epoch == -1
    assert [(h["train_loss"], h["i"]) for h in result.history] == [(1.0, 2), (4.0, 5)]
    assert model.bias.item() < -2  # six steps of Adam down the constant gradient


def test_ctrl_c_without_a_checkpoint_restores_the_best_weights(moons, monkeypatch):
    train, valid = moons
    flow = small_maf()
    monkeypatch.setattr(flow, "log_prob", InterruptOnCall(flow.log_prob, 10))  # step 3 of epoch 2
    result = fit_catching_interrupts(flow, train, valid, epochs=5, batch_size=500, progress=False)
    monkeypatch.undo()
    assert result.stopped == "interrupted" and result.best_epoch == 1 and not flow.training
    assert pf.evaluate(flow, valid).mean == pytest.approx(result.best_valid, rel=1e-6, abs=1e-6)


def test_resume_equals_an_uninterrupted_run_to_the_weights(moons, monkeypatch, tmp_path):
    """Ctrl-C before the first step of epoch 3, then resume into a fresh flow: the weights, the
    Adam and cosine schedule states, the history and the step count carry over."""
    train, valid = moons
    options = dict(epochs=3, batch_size=500, lr=3e-3, patience=None, progress=False, schedule="cosine")
    reference_flow = small_maf()
    reference = pf.fit(reference_flow, train, valid, **options)
    path = tmp_path / "checkpoint.pt"
    flow = small_maf()
    monkeypatch.setattr(flow, "log_prob", InterruptOnCall(flow.log_prob, 15))
    first = fit_catching_interrupts(flow, train, valid, checkpoint=path, **options)
    monkeypatch.undo()
    assert first.stopped == "interrupted" and first.steps == 12 and len(first.history) == 2
    resumed_flow = small_maf(seed=1)
    resumed = pf.fit(resumed_flow, train, valid, checkpoint=path, resume=True, **options)
    assert resumed.steps == reference.steps == 18
    for a, b in zip(resumed.history, reference.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    for key, value in reference_flow.state_dict().items():
        torch.testing.assert_close(resumed_flow.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_ctrl_c_in_an_epoch_keeps_its_steps_and_the_epoch_is_done_again(moons, monkeypatch, tmp_path):
    """Ctrl-C at step 4 of epoch 2 saves the weights and the count of the 9 steps taken; the
    resumed run does epoch 2 again from those weights, so 21 steps in all."""
    train, valid = moons
    path = tmp_path / "checkpoint.pt"
    first = interrupted_fit(small_maf(), moons, monkeypatch, path, call=11)
    assert first.stopped == "interrupted" and first.steps == 9 and len(first.history) == 1
    assert torch.load(path, weights_only=True)["steps"] == 9
    resumed = pf.fit(small_maf(), train, valid, epochs=3, batch_size=500, checkpoint=path, resume=True,
                     progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3] and resumed.steps == 21


def test_a_checkpoint_without_a_step_count_still_resumes(moons, monkeypatch, tmp_path):
    """Checkpoints written before the engine lack "steps": they resume, counting steps from 0."""
    train, valid = moons
    path = tmp_path / "checkpoint.pt"
    interrupted_fit(small_maf(), moons, monkeypatch, path, call=10)
    state = torch.load(path, weights_only=True)
    del state["steps"]
    torch.save(state, path)
    resumed = pf.fit(small_maf(), train, valid, epochs=2, batch_size=500, checkpoint=path, resume=True,
                     progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2] and resumed.steps == 6


def test_normalisation_layers_are_synchronised_only_inside_the_context():
    from pushforward.transforms.normalization import synchronised

    flow = pf.MAF(3, transforms=2, hidden_features=(8,), normalization="batch")
    layers = [m for m in flow.modules() if isinstance(m, (pf.transforms.BatchNorm, pf.transforms.ActNorm))]
    calls = []

    def total(t):
        calls.append(t.shape)
        return t

    x = torch.randn(16, 3)
    plain = flow.log_prob(x)
    with synchronised(flow, total):
        assert layers and all(m.sync is total for m in layers)
        synced = flow.log_prob(x)
    assert all(m.sync is None for m in layers) and len(calls) == 2 * len(layers)
    torch.testing.assert_close(synced, plain)  # one process: the sum over processes is the identity


# --- TensorBoard ---------------------------------------------------------------------------

def test_fit_logs_its_history_to_tensorboard(moons, tmp_path):
    train, valid = moons
    result = pf.fit(small_maf(), train[:1000], valid, epochs=2, batch_size=250, lr=3e-3, schedule="cosine",
                    progress=False, tensorboard_dir=tmp_path / "tb")
    logged = tensorboard_scalars(tmp_path / "tb")
    for key in ("train_loss", "valid_log_likelihood", "seconds"):
        assert [step for step, _ in logged[key]] == [4, 8]
        assert [value for _, value in logged[key]] == pytest.approx([h[key] for h in result.history], rel=1e-6)
    assert [value for _, value in logged["lr"]] == pytest.approx([1.5e-3, 0.0], abs=1e-9)  # cosine over 2 epochs
    assert [step for step, _ in logged["train_loss_step"]] == list(range(1, 9))
    mean = sum(value for _, value in logged["train_loss_step"][:4]) / 4
    assert mean == pytest.approx(result.history[0]["train_loss"], rel=1e-5)


def test_fit_logs_the_nfe_of_continuous_flows(tmp_path):
    torch.manual_seed(0)
    data = torch.randn(64, 2)
    result = pf.fit(pf.FFJORD(2, hidden_features=(8,)), data, data[:16], epochs=1, batch_size=32, progress=False,
                    tensorboard_dir=tmp_path)
    logged = tensorboard_scalars(tmp_path)
    assert logged["nfe_forward"] == [(2, pytest.approx(result.history[0]["nfe_forward"]))]
    assert logged["nfe_backward"][0][1] > 0


def test_fit_command_records_tensorboard_and_a_resume_continues_the_steps(tmp_path, monkeypatch):
    import json

    from pushforward.cli import main

    monkeypatch.chdir(tmp_path)
    tiny = ["--data", "moons", "--transforms", "1", "--hidden-features", "8", "--batch-size", "1000", "--quiet"]
    invoke(main, "fit", *tiny, "--epochs", "1", "--tensorboard", "tb", "--out", "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["tensorboard"] == str(tmp_path / "tb")
    invoke(main, "fit", "--resume", "run", "--epochs", "2", "--quiet")
    assert [step for step, _ in tensorboard_scalars(tmp_path / "tb")["train_loss"]] == [10, 20]  # 10 000 training rows


def test_the_engine_docstring_example_runs():
    import doctest

    from pushforward import engine

    assert doctest.testmod(engine).failed == 0
