"""Smoke tests of the benchmark harness (benchmarks/): pushforward alone, and each peer if installed."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch

import pushforward as pf

# benchmarks/ lives beside src/ and is not installed: make it importable under plain `pytest` too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import compare, peers  # noqa: E402

TINY = dict(transforms=2, hidden=(8, 8), bins=4)


@pytest.mark.parametrize("arch", list(peers.ARCHITECTURES))
def test_pushforward_builds_every_architecture(arch):
    model = peers.build("pushforward", peers.Spec(arch, 3, **TINY))
    x = torch.randn(5, 3)
    assert model.log_prob(x).shape == (5,)
    assert model.sample(4).shape == (4, 3)
    assert peers.parameter_count(model.module) > 0


def test_matmul_products_of_maf():
    """Each MADE layer: forward + weight gradient + input gradient, except the data-side first layer."""
    d, b = 3, 10
    model = peers.build("pushforward", peers.Spec("maf", d, **TINY))
    products = compare.matmul_products(model.module, b)
    sizes = [(d, 8), (8, 8), (8, 2 * d)]
    one = sum(2 * b * i * o for i, o in sizes)
    assert len(products) == 2 * 9 - 1
    assert compare.flop_count(products) == 2 * 3 * one - 2 * b * d * 8


def test_batch_plan_is_shared_and_sized():
    a, b = compare.batch_plan(50, 16, 7, seed=0), compare.batch_plan(50, 16, 7, seed=0)
    assert len(a) == 7 and all(len(i) == 16 for i in a)
    assert all(torch.equal(i, j) for i, j in zip(a, b))


def test_steps_are_taken_in_turns():
    """Every library takes each turn before the next turn starts; the seconds add up per library."""
    assert compare.chunks(12, 5) == [5, 5, 2] and compare.chunks(12, 0) == [12]
    calls = []

    class Clock:
        def __init__(self, name):
            self.name = name

        def train_steps(self, k):
            calls.append((self.name, k))
            return 0.5 * k

    runners = {name: Clock(name) for name in ("a", "b")}
    total = compare.round_robin(["b", "a"], [lambda r, k=k: r.train_steps(k) for k in (5, 2)], runners)
    assert calls == [("b", 5), ("a", 5), ("b", 2), ("a", 2)]
    assert total == {"b": 3.5, "a": 3.5}


def test_quick_run_of_pushforward_alone():
    lines: list[str] = []
    runs = compare.main(["--quick", "--libraries", "pushforward", "--data", "toy", "--arch", "maf,nsf-coupling",
                         "--hidden", "8,8", "--transforms", "2", "--toy-size", "300", "--log-prob-batch", "64",
                         "--sample-size", "32", "--threads", "1"], log=lines.append)
    assert len(runs) == 2
    result = runs[0]["results"]["pushforward"]
    assert len(result["train"]) == 2 and all(v > 0 for v in result["train"] + result["log_prob"] + result["sample"])
    assert result["steps"] == 1 + 2 * 3
    assert math.isfinite(result["test_ll"][0])
    assert abs(result["mass"] - 1) < 0.02  # log_prob is a density of the data
    assert runs[0]["bound"]["flops"] > 0
    assert any("GFLOP/s" in line for line in lines)


def test_memory_probe_in_a_subprocess():
    job = compare.ProbeJob("pushforward", dict(arch="maf", features=4, transforms=2, hidden=[64, 64], bins=8, bound=5.0),
                           "train", 256, 1, 0)
    assert compare.measure_memory(job, timeout=120) > 0.5  # gradients, Adam state, activations: ~8 MiB here


@pytest.mark.filterwarnings("ignore::UserWarning")  # the peers' own (nflows' init notice, torchflows' indexing)
@pytest.mark.parametrize("library", peers.PEERS)
def test_peer_builds_the_same_model_in_the_same_convention(library):
    """Equal parameter counts, and exp(log_prob) integrates to 1 over the data plane."""
    pytest.importorskip(library)
    torch.manual_seed(0)
    for arch in peers.ARCHITECTURES:
        spec = peers.Spec(arch, 2, **TINY)
        ours = peers.build("pushforward", spec)
        model = peers.build(library, spec)
        assert peers.parameter_count(model.module) == peers.parameter_count(ours.module), arch
        with torch.no_grad():
            for p in model.module.parameters():
                p.add_(0.05 * torch.randn_like(p))
        assert abs(compare.grid_mass(model, half_width=8.0, points=241) - 1) < 0.02, arch
        assert model.sample(3).shape == (3, 2)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("library", ["pushforward", *peers.PEERS])
def test_tanh_made_in_every_library(library):
    """--activation tanh reaches each library's MADE (torchflows' is tanh anyway)."""
    pytest.importorskip(library)
    for arch in ("maf", "nsf-ar"):
        relu = peers.build(library, peers.Spec(arch, 3, **TINY, activation="relu"))
        tanh = peers.build(library, peers.Spec(arch, 3, **TINY, activation="tanh"))
        assert peers.parameter_count(tanh.module) == peers.parameter_count(relu.module)
        torch.manual_seed(0)
        x = torch.randn(4, 3)
        with torch.no_grad():
            for p in relu.module.parameters():
                p.add_(0.3 * torch.randn_like(p))
            tanh.module.load_state_dict(relu.module.state_dict())  # same weights, other activation
            assert torch.isfinite(tanh.log_prob(x)).all()
            assert not torch.allclose(tanh.log_prob(x), relu.log_prob(x)) or library == "torchflows", arch
    with pytest.raises(ValueError, match="activation"):
        peers.Spec("maf", 3, activation="gelu")


def test_made_blocks_compares_each_layout_of_the_same_flow():
    from benchmarks import made_blocks

    settings = ["dense", "1", "auto", "2", "2-4-1", "auto+composed"]
    x = torch.randn(6, 8, dtype=torch.float64)
    flow = pf.testing.perturb(pf.MAF(8, transforms=2, hidden_features=(512, 512)).double(), scale=0.05)
    reference = flow.log_prob(x)
    for s in settings:
        torch.testing.assert_close(made_blocks.relayout(copy.deepcopy(flow), s).log_prob(x), reference, msg=s)
    rates = made_blocks.main(["--features", "8", "--hidden", "512,512", "--settings", ",".join(settings),
                              "--repeats", "1", "--steps", "1", "--batch-size", "4", "--threads", "1"])
    assert set(rates) == set(settings) and all(r > 0 for r in rates.values())


def test_phases_of_a_training_step():
    from benchmarks import phases

    result = phases.measure(["pushforward"], "maf", data="toy", rounds=1, steps=1, batch=8)
    forward, backward, step = result["pushforward"]
    assert forward > 0 and backward > 0 and step > 0


def test_in_place_benchmark_runs_every_case():
    from benchmarks import in_place

    ratios = in_place.main(["--repeats", "1", "--calls", "1", "--threads", "1"])
    assert len(ratios) == 5 and all(r > 0 for r in ratios.values())


def test_spline_benchmark_times_every_piece():
    from benchmarks import spline

    medians = spline.main(["--repeats", "1", "--calls", "1", "--threads", "1"])
    assert len(medians) == 6 and all(t > 0 for t in medians.values())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_glow_benchmark_runs_side_by_side_on_digits():
    from benchmarks import glow

    lines = []
    result = glow.main(["--data", "digits", "--levels", "1", "--steps", "1", "--hidden", "4", "--repeats", "2",
                        "--turn", "2", "--warmup", "1", "--no-memory"], log=lines.append)
    ours = result["libraries"]["pushforward"]
    assert len(ours["images_per_second"]) == 2 and math.isfinite(ours["test_bits_per_dim"])
    assert ours["test_bits_per_dim"] > 0
    if "normflows" in result["libraries"]:
        assert len(result["throughput_ratio"]) == 2
        assert math.isfinite(result["libraries"]["normflows"]["test_bits_per_dim"])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_glow_peers_score_the_same_pixel_space():
    """After ActNorm's data-dependent initialisation on the same batch, both Glows are a standard
    normal of the standardised pixels (zero-initialised couplings, rotations): their bits/dim of
    the same uniform pixels agree, which checks that both are scored in the [0, 256) pixel space."""
    from benchmarks import glow

    pytest.importorskip("normflows")
    x = torch.rand(500, 1, 8, 8) * 256
    values = []
    for name in glow.LIBRARIES:
        model = glow.build(name, (1, 8, 8), 1, 1, 4, 256)
        model.module.train()
        with torch.no_grad():
            model.nll(x)
        values.append(glow.bits_per_dim(model, x)[0])
    assert abs(values[0] - values[1]) < 0.02, values


def test_cnf_benchmark_runs_side_by_side_on_digits():
    from benchmarks import cnf

    # the default: each library in its own spawned process, starting together
    result = cnf.main(["--minutes", "0.002", "--hidden", "8", "--rtol", "1e-3", "--atol", "1e-3"], log=lambda _: None)
    assert result["parallel"]
    ours = result["libraries"]["pushforward"]
    assert ours["steps"] >= 1 and ours["nfe_forward"] > 0 and math.isfinite(ours["test_log_likelihood"])
    assert ours["validations"] >= 1 and ours["selected_step"] <= ours["steps"]
    if "zuko" in result["libraries"]:
        zuko = result["libraries"]["zuko"]
        assert math.isfinite(zuko["test_log_likelihood"]) and zuko["selected_epoch"] >= 1


def test_cnf_benchmark_keeps_the_best_validation_weights():
    from benchmarks import cnf

    torch.manual_seed(0)
    x = torch.randn(60, 3)
    splits = cnf.Splits(train=x[:40], valid=x[40:50], test=x[50:], offset=0.0)
    model = cnf.build("pushforward", 3, [8], 1e-3, 1e-3, None)
    plan = compare.batch_plan(40, 10, 9, seed=0)  # 4 steps per epoch; the plan ends mid-epoch
    measured = cnf.train(model, splits, plan, steps_per_epoch=4, seconds=math.inf, lr=0.05)
    assert measured["steps"] == 9 and measured["validations"] == 3  # after epochs 1, 2 and the last step
    assert measured["valid_log_likelihood"] == max(measured["valid_history"])
    assert measured["selected_step"] in (4, 8, 9)
    assert measured["selected_epoch"] == math.ceil(measured["selected_step"] / 4)
    # the model holds the selected weights: its validation log-likelihood is the best one
    reloaded = cnf.held_out_log_likelihood(model, splits.valid, 0.0)[0]
    assert reloaded == pytest.approx(measured["valid_log_likelihood"], rel=1e-6)


def test_residual_benchmark_holds_both_libraries_to_their_bound():
    """Both residual flows train side by side; afterwards every effective weight's spectral norm
    is printed, and pushforward's is at most c (normflows' only after its update_lipschitz step)."""
    pytest.importorskip("normflows")
    from benchmarks import residual

    result = residual.main(["--transforms", "2", "--hidden", "16,16", "--steps", "4", "--repeats", "2",
                            "--turn", "2", "--coefficient", "0.5", "--lr", "0.05"])
    assert len(result["ratios"]) == 2 and result["steps"] == 10
    assert max(result["norms_pushforward"]) <= 0.5 * (1 + 1e-6)
    assert len(result["norms_normflows"]) == len(result["norms_pushforward"]) == 6
    assert all(math.isfinite(result[f"test_{k}"][0]) for k in residual.LIBRARIES)
