"""Variational inference: targets, the ELBO estimator, STL, log Z by importance sampling, `pushforward vi`."""

import json
import math

import pytest
import torch

import pushforward as pf
from pushforward import targets, vi
from pushforward.cli.vi import vi as vi_command
from pushforward.core import Chain, Flow
from pushforward.distributions import DiagNormal, StandardNormal
from pushforward.transforms.elementwise import AffineMap, Elementwise
from cli_helpers import invoke, tensorboard_scalars

U1_LOG_Z = 1.8775


def gaussian_q(loc, log_scale):
    """q = N(loc, diag exp(log_scale)^2) as a flow with no layers, float64."""
    flow = Flow(DiagNormal(len(loc)), Chain()).double()
    with torch.no_grad():
        flow.base.loc.copy_(torch.as_tensor(loc))
        flow.base.log_scale.copy_(torch.as_tensor(log_scale))
    return flow


def gaussian_target(mean, cov, log_z):
    mean, cov = torch.tensor(mean, dtype=torch.float64), torch.tensor(cov, dtype=torch.float64)
    p = torch.distributions.MultivariateNormal(mean, cov)
    return p, (lambda x: p.log_prob(x) + log_z)


# --- targets -------------------------------------------------------------------------------

def test_u1_log_z_on_a_grid():
    t = targets.get_target("u1")
    assert targets.grid_log_z(t.log_prob, ((-5, 5), (-5, 5)), 500) == pytest.approx(U1_LOG_Z, abs=1e-4)


@pytest.mark.parametrize("name", ["u1", "u2", "u3", "u4"])
def test_energy_reference_log_z_matches_a_grid(name):
    t = targets.get_target(name)
    assert targets.grid_log_z(t.log_prob, ((-5, 5), (-5, 5)), 400) == pytest.approx(t.log_z, abs=1e-5)


def test_box_targets_have_a_finite_gradient_everywhere():
    z = torch.tensor([[0.5, 0.5], [6.0, -7.0], [-30.0, 2.0]], dtype=torch.float64, requires_grad=True)
    for name in ("u2", "u3", "u4"):
        log_p = targets.get_target(name).log_prob(z)
        (grad,) = torch.autograd.grad(log_p.sum(), z)
        assert torch.isfinite(log_p).all() and torch.isfinite(grad).all()
        assert log_p[1] < log_p[0] - 100  # the wall


@pytest.mark.parametrize("target, exact", [
    (targets.banana(1.5, 0.7, 0.5), lambda z: (torch.distributions.Normal(0, 1.5).log_prob(z[:, 0])
                                               + torch.distributions.Normal(0.7 * (z[:, 0] ** 2 - 1.5**2), 0.5)
                                               .log_prob(z[:, 1]))),
    (targets.funnel(4), lambda z: (torch.distributions.Normal(0, 3.0).log_prob(z[:, 0])
                                   + torch.distributions.Normal(0, torch.exp(z[:, :1] / 2))
                                   .log_prob(z[:, 1:]).sum(-1))),
    (targets.gaussian_mixture([[0.0, 1.0], [2.0, -1.0]], [0.5, 2.0], [1.0, 3.0]),
     lambda z: torch.logsumexp(torch.stack([
         math.log(0.25) + torch.distributions.Normal(torch.tensor([0.0, 1.0]), 0.5).log_prob(z).sum(-1),
         math.log(0.75) + torch.distributions.Normal(torch.tensor([2.0, -1.0]), 2.0).log_prob(z).sum(-1)]), 0)),
])
def test_exact_log_z_is_log_p_tilde_minus_the_normalised_density(target, exact):
    z = torch.randn(50, target.dim, dtype=torch.float64) * 2
    torch.testing.assert_close(target.log_prob(z) - exact(z), torch.full((50,), target.log_z, dtype=torch.float64))


def test_builtin_mixture_log_z_on_a_grid():
    t = targets.get_target("mixture")
    assert targets.grid_log_z(t.log_prob, ((-7, 7), (-7, 7)), 400) == pytest.approx(t.log_z, abs=1e-6)
    assert t.log_z == pytest.approx(math.log(21))


def test_user_targets_from_a_file_and_a_module(tmp_path, monkeypatch):
    (tmp_path / "mytarget.py").write_text(
        "import torch\n"
        "def ring(z):\n    return -(z.norm(dim=-1) - 1) ** 2\n"
        "ring.dim = 2\n"
        "def plain(z):\n    return -z.square().sum(-1)\n"
        "def bad(z):\n    return z\n"
        "NOT_CALLABLE = 3\n")
    t = targets.get_target(f"{tmp_path / 'mytarget.py'}:ring")
    assert t.dim == 2 and t.log_prob(torch.zeros(4, 2)).shape == (4,)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert targets.get_target("mytarget:plain", dim=3).dim == 3
    with pytest.raises(ValueError, match="dimension"):
        targets.get_target("mytarget:plain")
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        targets.get_target("mytarget:bad", dim=2).log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="not callable"):
        targets.get_target("mytarget:NOT_CALLABLE", dim=2)
    with pytest.raises(ImportError):
        targets.get_target("mytarget:missing", dim=2)
    with pytest.raises(FileNotFoundError):
        targets.get_target(f"{tmp_path / 'nope.py'}:f", dim=2)
    with pytest.raises(ValueError, match="unknown target"):
        targets.get_target("u7")


# --- the ELBO, STL and log Z ----------------------------------------------------------------

def test_elbo_estimator_is_unbiased_for_a_gaussian_target():
    p, log_target = gaussian_target([1.0, -0.5], [[1.0, 0.6], [0.6, 2.0]], log_z=2.5)
    q = gaussian_q([0.3, 0.2], [-0.4, 0.5])
    q_cov = torch.diag(torch.exp(2 * q.base.log_scale.detach()))
    kl = torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(q.base.loc.detach(), q_cov), p)
    with torch.no_grad():
        estimates = torch.stack([vi.elbo(q, log_target, samples=4) for _ in range(2000)])
    se = estimates.std() / math.sqrt(len(estimates))
    assert abs(float(estimates.mean()) - (2.5 - float(kl))) < 4 * float(se)
    assert float(se) > 0


def _gradients(flow, log_target, stl, repeats=300, samples=4):
    out = []
    for _ in range(repeats):
        flow.zero_grad()
        (-vi.elbo(flow, log_target, samples, stl=stl)).backward()
        out.append(torch.cat([p.grad.flatten() for p in flow.parameters()]))
    return torch.stack(out)


def test_stl_gradient_has_the_same_mean_and_vanishes_at_the_optimum():
    flow = Flow(StandardNormal(2), Elementwise(AffineMap(), 2)).double()
    with torch.no_grad():
        flow.transform.conditioner.free["h"].copy_(torch.tensor([[0.3, -0.2], [-0.5, 0.4]]))
    _, log_target = gaussian_target([0.0, 0.0], [[1.0, 0.0], [0.0, 1.5]], log_z=0.0)
    plain, stl = _gradients(flow, log_target, False), _gradients(flow, log_target, True)
    se = torch.sqrt(plain.var(0) / len(plain) + stl.var(0) / len(stl))
    assert ((plain.mean(0) - stl.mean(0)).abs() < 4 * se + 1e-9).all()
    # at q = p the STL gradient is zero for every sample, the plain one is not (Roeder et al. 2017)
    with torch.no_grad():
        raw = 5 * math.atanh(0.5 * math.log(1.5) / 5)  # AffineMap clamps the log-scale softly: s = 5 tanh(raw / 5)
        flow.transform.conditioner.free["h"].copy_(torch.tensor([[0.0, 0.0], [0.0, raw]], dtype=torch.float64))
    plain, stl = _gradients(flow, log_target, False, 20), _gradients(flow, log_target, True, 20)
    assert stl.abs().max() < 1e-10 and plain.abs().max() > 1e-2


def test_stl_log_q_equals_the_flow_log_q_and_leaves_the_parameters_out():
    flow = pf.PlanarFlow(2, transforms=3).double()
    x, log_q = flow.rsample_and_log_prob((6,))
    detached = vi._log_q_detached(flow, x.detach().requires_grad_())
    torch.testing.assert_close(detached, log_q.detach())
    detached.sum().backward()
    assert all(p.grad is None for p in flow.parameters())


def test_log_z_of_a_normalised_target_is_recovered_within_its_standard_error():
    target = targets.gaussian_mixture([[-1.0, 0.0], [1.5, 1.0]], [0.7, 1.0], [1.0, 2.0])
    q = gaussian_q([0.5, 0.5], [0.7, 0.7]).float()
    estimates = [vi.estimate_log_z(q, target.log_prob, 2000) for _ in range(60)]
    values = torch.tensor([e.log_z for e in estimates])
    reported = torch.tensor([e.stderr for e in estimates])
    assert abs(estimates[0].log_z - math.log(3)) < 3 * estimates[0].stderr
    # the delta-method stderr matches the spread of the estimates, and log Z^ is close to unbiased
    assert float(values.std() / reported.mean()) == pytest.approx(1.0, abs=0.3)
    assert abs(float(values.mean()) - math.log(3)) < 4 * float(values.std()) / math.sqrt(len(values))
    assert 1 <= estimates[0].ess <= 2000 and estimates[0].elbo < estimates[0].log_z


def test_estimate_log_z_rejects_no_overlap():
    q = gaussian_q([0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="do not overlap"):
        vi.estimate_log_z(q, lambda x: torch.full(x.shape[:-1], -math.inf, dtype=x.dtype), 100)


def test_fitting_planar_to_u1_raises_the_elbo_and_recovers_log_z():
    torch.manual_seed(0)
    target = targets.get_target("u1")
    flow = pf.PlanarFlow(2, transforms=8)
    result = vi.fit_vi(flow, target.log_prob, steps=300, samples=128, lr=1e-2, seed=0, progress=False)
    assert result.stopped == "steps" and result.steps == 300
    assert result.history[-1]["elbo"] > result.history[0]["elbo"] + 3
    estimate = vi.estimate_log_z(flow, target.log_prob, 20_000)
    assert abs(estimate.log_z - U1_LOG_Z) < 3 * estimate.stderr
    assert estimate.elbo < U1_LOG_Z and estimate.ess > 5_000


def test_annealing_schedule():
    assert vi.annealing(0, 0) == 1.0
    assert vi.annealing(0, 100) == pytest.approx(0.01)
    assert vi.annealing(50, 100, beta0=0.0) == pytest.approx(0.5)
    assert vi.annealing(500, 100) == 1.0
    flow = pf.RadialFlow(2, transforms=2)
    result = vi.fit_vi(flow, targets.get_target("u2").log_prob, steps=20, samples=8, anneal_steps=10,
                       record_every=5, progress=False)
    betas = [h["beta"] for h in result.history]
    assert betas == sorted(betas) and betas[0] < 1 and betas[-1] == 1.0


@pytest.mark.parametrize("flow", [
    lambda: pf.IAF(2, transforms=2, hidden_features=(8,)),
    lambda: pf.NSF(2, transforms=2, hidden_features=(8,)),
    lambda: pf.RealNVP(2, transforms=2, hidden_features=(8,)),
    lambda: pf.SylvesterFlow(2, transforms=2),
], ids=["iaf", "nsf", "realnvp", "sylvester"])
def test_sampling_direction_flows_fit_with_and_without_stl(flow):
    q = flow()
    for stl in (False, True):
        result = vi.fit_vi(q, targets.get_target("u3").log_prob, steps=5, samples=16, stl=stl, progress=False)
        assert all(math.isfinite(h["elbo"]) for h in result.history)


def test_fit_vi_errors():
    q = pf.PlanarFlow(2, transforms=1)
    with pytest.raises(ValueError, match="ELBO became"):
        vi.fit_vi(q, lambda x: torch.full(x.shape[:-1], -math.inf), steps=2, progress=False)
    with pytest.raises(ValueError, match="schedule"):
        vi.fit_vi(q, targets.get_target("u1").log_prob, steps=2, schedule="step", progress=False)
    with pytest.raises(ValueError, match="beta0"):
        vi.fit_vi(q, targets.get_target("u1").log_prob, steps=2, beta0=0.0, progress=False)


# --- pushforward vi ------------------------------------------------------------------------

def run(*args, ok=True):
    return invoke(vi_command, *args, ok=ok)


def test_cli_vi_writes_a_run_folder(tmp_path):
    out = tmp_path / "u2"
    result = run("--target", "u2", "--flow", "planar", "--transforms", "2", "--steps", "20", "--samples", "16",
                 "--anneal-steps", "10", "--log-z-samples", "500", "--quiet", "--json", "--out", out)
    line = json.loads(result.output.strip().splitlines()[-1])
    for key in ("elbo", "elbo_stderr", "log_z", "log_z_stderr", "ess", "reference_log_z", "log_z_error_stderrs"):
        assert key in line and math.isfinite(line[key])
    for name in ("config.json", "model.pt", "metrics.json", "elbo.png", "density.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    flow = pf.flows.PRESETS[config["flow"]](config["dim"], **config["flow_kwargs"])
    flow.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert "history" in json.loads((out / "metrics.json").read_text())
    assert run("--target", "u2", "--out", out, ok=False).exit_code == 1  # refuses to overwrite


def test_cli_vi_logs_to_tensorboard(tmp_path):
    run("--target", "u1", "--flow", "planar", "--transforms", "2", "--steps", "20", "--samples", "16",
        "--log-z-samples", "100", "--quiet", "--tensorboard", tmp_path / "tb", "--out", tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["vi"]["tensorboard"] == str(tmp_path / "tb")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    logged = tensorboard_scalars(tmp_path / "tb")
    assert logged["elbo"] == [(h["step"], pytest.approx(h["elbo"], rel=1e-6)) for h in history]
    assert [v for _, v in logged["train_loss"]] == pytest.approx([-h["objective"] for h in history], rel=1e-6)
    assert len(logged["train_loss_step"]) == 20 and logged["lr"][-1][1] == pytest.approx(0, abs=1e-9)


def test_cli_vi_user_target_and_errors(tmp_path):
    path = tmp_path / "gauss3.py"
    path.write_text("def log_p(z):\n    return -0.5 * z.square().sum(-1)\n")
    result = run("--target", f"{path}:log_p", "--dim", "3", "--flow", "iaf", "--transforms", "1",
                 "--hidden-features", "8", "--steps", "5", "--log-z-samples", "200", "--quiet", "--json",
                 "--out", tmp_path / "g")
    line = json.loads(result.output.strip().splitlines()[-1])
    assert line["dim"] == 3 and line["reference_log_z"] is None
    assert not (tmp_path / "g" / "density.png").exists()
    bad = run("--target", "u1", "--flow", "planar", "--hidden-features", "8", "--out", tmp_path / "x", ok=False)
    assert bad.exit_code != 0 and "does not apply" in bad.output
    bad = run("--target", "nosuchmodule:f", "--dim", "2", "--out", tmp_path / "y", ok=False)
    assert bad.exit_code == 1 and "error" in bad.output.lower() and len(bad.output.strip().splitlines()) == 1
