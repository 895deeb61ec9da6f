"""Continuous normalizing flows: the checks the contract suite does not make (estimators,
adjoint, regularisers, NFE, errors). Float64 and tight tolerances unless a test says otherwise."""

import copy
import json
import math

import pytest
import torch
from torch import nn

import pushforward as pf
from cli_helpers import invoke
from pushforward import testing
from pushforward.cli import main
from pushforward.experiment import load_run
from pushforward.transforms import ConvergenceError
from pushforward.transforms.continuous import ContinuousFlow, recording

D = 4
TIGHT = dict(rtol=1e-9, atol=1e-9)


def block(context_features=0, seed=0, **options):
    torch.manual_seed(seed)
    t = ContinuousFlow(D, context_features, (16, 16), **{**TIGHT, **options}).double()
    return testing.perturb(t, scale=0.5, seed=seed)


def linear_block(a, **options):
    """f(z) = A z, time-independent: z(t) = exp(tA) z(0)."""
    t = ContinuousFlow(len(a), 0, (8,), time_dependent=False, **{**TIGHT, **options}).double()
    t.net = nn.Linear(len(a), len(a), bias=False).double()
    with torch.no_grad():
        t.net.weight.copy_(a)
    return t


def symmetric(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(D, D, generator=g, dtype=torch.float64)
    return 0.4 * (m + m.T) / 2


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_trace_is_unbiased(noise):
    t = block(trace="hutchinson", noise=noise).train()
    z = torch.randn(1, D, dtype=torch.float64)
    with torch.no_grad():
        exact = t.eval()(z)[1]
        # every row of the batch draws its own noise: 4000 estimates of the same path's ladj
        estimates = t.train()(z.expand(4000, D))[1]
    error = estimates.mean() - exact
    stderr = estimates.std() / math.sqrt(len(estimates))
    assert estimates.std() > 1e-3  # it is an estimate
    assert abs(float(error)) < 4 * float(stderr), (float(error), float(stderr))


def test_hutchinson_noise_is_fixed_within_a_solve():
    # a solve that drew fresh noise at every evaluation would not be invertible: the round trip
    # of one call each way with the same seed would fail
    t = block(trace="hutchinson", evaluation_trace="hutchinson")
    z = torch.randn(5, D, dtype=torch.float64)
    torch.manual_seed(3)
    x, ladj = t(z)
    torch.manual_seed(3)
    z2, ladj2 = t.inverse(x)
    torch.testing.assert_close(z2, z, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(ladj2, -ladj, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_adjoint_and_direct_backpropagation_give_the_same_gradients(inverse):
    direct = block(context_features=2, time=0.7)
    adjoint = copy.deepcopy(direct)
    adjoint.adjoint = True
    u = torch.randn(6, D, dtype=torch.float64)
    c = torch.randn(6, 2, dtype=torch.float64)
    grads = []
    for t in (direct, adjoint):
        uu, cc = u.clone().requires_grad_(), c.clone().requires_grad_()
        with recording() as record:
            out, ladj = (t.inverse if inverse else t)(uu, cc)
            (out.square().sum() + ladj.sum()).backward()
        assert record.nfe_backward > 0
        grads.append([uu.grad, cc.grad] + [p.grad for p in t.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)


def test_zero_dynamics_is_the_identity():
    t = ContinuousFlow(D, 2, (8,)).double()
    torch.nn.init.zeros_(t.net[-1].weight)  # f = 0
    torch.nn.init.zeros_(t.net[-1].bias)
    z, c = torch.randn(3, D, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    for method in (t, t.inverse):
        out, ladj = method(z, c)
        torch.testing.assert_close(out, z, atol=1e-14, rtol=0)  # up to the rounding of the solver's interpolation
        assert torch.equal(ladj, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_regularisers_of_a_linear_field_match_the_closed_form(inverse):
    a, time = symmetric(), 0.8
    t = linear_block(a, time=time, kinetic=0.3, jacobian=0.2)
    z0 = torch.randn(5, D, dtype=torch.float64)
    # K = int_0^T ||A exp(tA) z0||^2 dt = sum_i l_i z0'_i^2 (exp(2 l_i T) - 1) / 2, z0' = Q^T z0
    eigenvalues, q = torch.linalg.eigh(a)
    w = (z0 @ q).square()
    kinetic = (w * eigenvalues * torch.expm1(2 * eigenvalues * time) / 2).sum(-1)
    frobenius = a.square().sum() * time
    x = z0 @ torch.linalg.matrix_exp(time * a).T
    with recording() as record:
        out, ladj = t.inverse(x) if inverse else t(z0)
    torch.testing.assert_close(out, z0 if inverse else x, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(ladj, (-1 if inverse else 1) * torch.trace(a) * time * torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(record.kinetic[0], kinetic, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(record.jacobian[0], frobenius.expand(5), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(record.penalty, 0.3 * kinetic + 0.2 * frobenius)


def test_hutchinson_frobenius_estimate_is_unbiased():
    a = symmetric(1)
    t = linear_block(a, trace="hutchinson", jacobian=1.0).train()
    with torch.no_grad(), recording() as record:
        t(torch.randn(1, D, dtype=torch.float64).expand(4000, D))
    estimates = record.jacobian[0]
    stderr = estimates.std() / math.sqrt(len(estimates))
    assert abs(float(estimates.mean() - a.square().sum())) < 4 * float(stderr)


def test_regularisers_are_integrated_only_when_recorded_and_weighted():
    t = block()
    z = torch.randn(3, D, dtype=torch.float64)
    with recording() as record:
        t(z)
    assert record.solves == 1 and record.nfe_forward > 0 and record.kinetic == [] and record.penalty == 0.0
    weighted = block(kinetic=1.0)
    with recording() as outer:
        with recording() as inner:
            x, _ = weighted(z)
    assert inner.solves == 1 and outer.solves == 0 and inner.penalty.shape == (3,)
    # the regularisers' integrals do not steer the steps: the same steps, the same map
    assert inner.nfe_forward == record.nfe_forward
    torch.testing.assert_close(x, t(z)[0], atol=0, rtol=0)
    torch.testing.assert_close(weighted(z)[0], t(z)[0])  # outside: the same map


def test_float32_with_float64_tolerances():
    t = block().float()  # rtol = atol = 1e-9: raised to what float32 resolves
    z = torch.randn(3, D)
    x, ladj = t(z)
    z2, ladj2 = t.inverse(x)
    torch.testing.assert_close(z2, z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ladj2, -ladj, atol=1e-4, rtol=1e-4)


def test_fixed_step_method():
    t = block(method="rk4", step_size=0.05)
    z = torch.randn(3, D, dtype=torch.float64)
    with recording() as record:
        x, ladj = t(z)
    assert record.nfe_forward == 4 * 20
    # exact up to the discretisation error (RK4 of the trace is not the ladj of the RK4 map)
    torch.testing.assert_close(t.inverse(x)[0], z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ladj, testing.autograd_ladj(t, z), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("options, message", [
    (dict(method="rk45"), "unknown method 'rk45'"),
    (dict(rtol=0.0), "rtol must be a finite number > 0, got 0.0"),
    (dict(atol=-1e-5), "atol must be a finite number > 0"),
    (dict(trace="approximate"), "unknown trace"),
    (dict(noise="uniform"), "unknown noise"),
    (dict(method="euler"), "needs a step_size"),
    (dict(kinetic=-1.0), "kinetic must be a finite number >= 0"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message) as error:
        ContinuousFlow(D, **options)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("adjoint", [False, True])
def test_a_solve_over_its_budget_names_the_nfe(adjoint):
    t = block(max_evaluations=30, adjoint=adjoint)
    with pytest.raises(ConvergenceError, match=r"budget of 30 function evaluations \(NFE 31") as error:
        t(torch.randn(3, D, dtype=torch.float64))
    assert "\n" not in str(error.value)
    if adjoint:  # the backward solve has its own budget: here that of the forward solve, too small
        t.max_evaluations = 10_000
        z = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
        with recording() as record:
            t(z)
        t.max_evaluations = record.nfe_forward
        x, ladj = t(z)
        with pytest.raises(ConvergenceError, match="backward"):
            (x.sum() + ladj.sum()).backward()


def test_ffjord_preset_estimates_in_training_and_is_exact_in_evaluation():
    torch.manual_seed(0)
    flow = testing.perturb(pf.FFJORD(3, transforms=2, hidden_features=(8,), normalization="act"), 0.3).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    flow.eval()
    torch.testing.assert_close(flow.log_prob(x), flow.log_prob(x))
    flow.train()
    assert not torch.allclose(flow.log_prob(x), flow.log_prob(x))


def test_ffjord_evaluation_trace_from_the_command_line(tmp_path):
    out = tmp_path / "ffjord"
    invoke(main, "fit", "--data", "moons", "--flow", "ffjord", "--hidden-features", "8", "--evaluation-trace",
           "hutchinson", "--rtol", "1e-3", "--atol", "1e-3", "--epochs", "1", "--max-minutes", "0.02", "--quiet",
           "--out", out)
    assert json.loads((out / "config.json").read_text())["flow_kwargs"]["evaluation_trace"] == "hutchinson"
    assert json.loads((out / "metrics.json").read_text())["log_det"] == "hutchinson"  # the figure is an estimate
    flow = load_run(out)[0].double()
    x = torch.randn(5, 2, dtype=torch.float64)
    assert not torch.allclose(flow.log_prob(x), flow.log_prob(x))  # Hutchinson's estimate in evaluation mode
    result = invoke(main, "fit", "--data", "moons", "--flow", "ffjord", "--evaluation-trace", "brute", "--out",
                    tmp_path / "x", ok=False)
    assert "'--evaluation-trace': 'brute' is not one of 'exact', 'hutchinson'" in result.output


def test_fit_reports_nfe_and_the_penalty():
    torch.manual_seed(0)
    data = torch.randn(64, 2)
    flow = pf.FFJORD(2, hidden_features=(8,), kinetic=0.1, jacobian=0.1)
    result = pf.fit(flow, data, data[:16], epochs=1, batch_size=32, progress=False)
    entry = result.history[0]
    assert entry["nfe_forward"] > 0 and entry["nfe_backward"] > 0 and entry["penalty"] > 0
    plain = pf.fit(pf.MAF(2, transforms=1, hidden_features=(8,)), data, epochs=1, progress=False)
    assert "nfe_forward" not in plain.history[0]


def test_ffjord_from_the_command_line_reports_nfe(tmp_path):
    out = tmp_path / "ffjord"
    invoke(main, "fit", "--data", "moons", "--flow", "ffjord", "--hidden-features", "8", "--trace", "exact",
           "--kinetic", "0.01", "--jacobian", "0.01", "--rtol", "1e-4", "--atol", "1e-4", "--epochs", "1", "--quiet",
           "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"][0]["nfe_forward"] > 0 and metrics["history"][0]["penalty"] > 0
    assert (out / "density.png").is_file()
    kwargs = json.loads((out / "config.json").read_text())["flow_kwargs"]
    assert kwargs["kinetic"] == 0.01 and kwargs["trace"] == "exact"
    result = invoke(main, "fit", "--data", "moons", "--flow", "maf", "--kinetic", "1", "--out", tmp_path / "x", ok=False)
    assert "--kinetic does not apply to --flow maf" in result.output
