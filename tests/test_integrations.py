"""The sbi and Pyro adapters, each inside the real tool: an sbi NPE run on a Gaussian-linear
task, and Pyro SVI with a flow guide on a conjugate model; both posteriors are known."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pushforward as pf

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str):
    """The module examples/NAME.py (its tasks, shared with the tests)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def test_importing_pushforward_imports_neither_sbi_nor_pyro():
    code = "import sys, pushforward; print('sbi' in sys.modules, 'pyro' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("extra", ["sbi", "pyro"])
def test_a_missing_extra_gives_a_one_line_error(extra):
    # a None entry in sys.modules makes `import <extra>` fail as if it were not installed
    code = (f"import sys; sys.modules['{extra}'] = None\nimport pushforward as pf\n"
            f"try:\n    pf.integrations.{extra}\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == (f"pushforward.integrations.{extra} needs {extra}, which is not installed: "
                           f'pip install -e ".[{extra}]"')


# --- sbi ----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _in_a_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # sbi's trainers write TensorBoard logs to ./sbi-logs


def test_sbi_estimator_shapes_and_errors():
    pytest.importorskip("sbi")
    estimator = pf.integrations.sbi.build("maf", transforms=2, hidden_features=(16,))(torch.randn(50, 3),
                                                                                     torch.randn(50, 4))
    assert estimator.input_shape == (3,) and estimator.condition_shape == (4,)
    assert estimator.log_prob(torch.randn(7, 2, 3), torch.randn(2, 4)).shape == (7, 2)
    assert estimator.log_prob(torch.randn(7, 1, 3), torch.randn(2, 4)).shape == (7, 2)
    assert estimator.log_prob(torch.randn(7, 2, 3), torch.randn(7, 2, 4)).shape == (7, 2)
    assert estimator.loss(torch.randn(6, 3), torch.randn(6, 4)).shape == (6,)
    assert estimator.sample((5,), torch.randn(2, 4)).shape == (5, 2, 3)
    condition = torch.randn(2, 4)
    x, log_q = estimator.sample_and_log_prob((5,), condition)
    assert x.shape == (5, 2, 3)
    torch.testing.assert_close(log_q, estimator.log_prob(x, condition), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="condition"):
        estimator.log_prob(torch.randn(7, 2, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="unknown flow 'nope'"):
        pf.integrations.sbi.build("nope")
    with pytest.raises(ValueError, match="embedding_net"):
        pf.integrations.sbi.build("maf")(torch.randn(50, 3), torch.randn(50, 2, 2))
    with pytest.raises(ValueError, match="as embedding_net"):
        pf.integrations.sbi.build("maf", embedding=nn.Identity())


@pytest.mark.parametrize("name, options, activation", [("nsf", {}, nn.Tanh),
                                                        ("nsf", {"autoregressive": True}, nn.Tanh),
                                                        ("maf", {"activation": nn.ReLU}, nn.ReLU)])
def test_sbi_conditioners_are_tanh_unless_told(name, options, activation):
    pytest.importorskip("sbi")
    estimator = pf.integrations.sbi.build(name, transforms=2, hidden_features=(8,), **options)(torch.randn(50, 3),
                                                                                              torch.randn(50, 4))
    kinds = {type(m) for m in estimator.modules()} & {nn.Tanh, nn.ReLU}
    assert kinds == {activation}


def test_sbi_builds_presets_without_conditioners():
    pytest.importorskip("sbi")
    estimator = pf.integrations.sbi.build("planar", transforms=2)(torch.randn(50, 3), torch.randn(50, 4))
    assert estimator.log_prob(torch.randn(7, 2, 3), torch.randn(2, 4)).shape == (7, 2)


def test_sbi_estimator_z_scores_like_sbi():
    pytest.importorskip("sbi")
    torch.manual_seed(0)
    theta, x = 3 + 5 * torch.randn(500, 2), -2 + 0.1 * torch.randn(500, 3)
    estimator = pf.integrations.sbi.build("realnvp", transforms=2, hidden_features=(8,))(theta, x)
    standardize = estimator.embedding_net[0]
    torch.testing.assert_close(standardize(x).mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardize(x).std(0), torch.ones(3))
    samples = estimator.sample((2000,), x[:1])[:, 0]  # a flow at the identity: the z-scored prior
    torch.testing.assert_close(samples.mean(0), theta.mean(0), atol=0.5, rtol=0)
    torch.testing.assert_close(samples.std(0), theta.std(0), atol=0.0, rtol=0.1)


@pytest.mark.parametrize("name", ["nsf", "maf"])
def test_sbi_npe_run_recovers_the_gaussian_linear_posterior(name):
    pytest.importorskip("sbi")
    from sbi.inference import NPE

    prior, theta, x, x_o, (true,) = example("sbi_gaussian_linear").task(2000, 1, seed=0, dim=2)
    npe = NPE(prior, density_estimator=pf.integrations.sbi.build(name, transforms=2, hidden_features=(32, 32)),
              show_progress_bars=False)
    estimator = npe.append_simulations(theta, x).train(max_num_epochs=8, training_batch_size=100)
    assert isinstance(estimator, pf.integrations.sbi.FlowEstimator)
    posterior = npe.build_posterior()
    samples = posterior.sample((2000,), x=x_o, show_progress_bars=False)
    assert samples.shape == (2000, 2)
    torch.testing.assert_close(samples.mean(0), true.mean, atol=0.04, rtol=0)
    torch.testing.assert_close(samples.std(0), true.stddev, atol=0, rtol=0.25)
    reference = true.sample((2000,))
    gap = true.log_prob(reference).mean() - posterior.log_prob(reference, x=x_o).mean()  # KL(true || q), nats
    assert gap < 0.2


def test_sbi_with_an_embedding_net_for_image_conditions():
    pytest.importorskip("sbi")
    from sbi.inference import NPE

    torch.manual_seed(0)
    prior = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    theta = prior.sample((300,))
    x = theta[:, :, None, None].expand(300, 2, 4, 4) + 0.1 * torch.randn(300, 2, 4, 4)  # 2x4x4 images
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    npe = NPE(prior, density_estimator=pf.integrations.sbi.build("maf", transforms=2, hidden_features=(16,),
                                                                 embedding_net=cnn), show_progress_bars=False)
    initial = cnn[0].weight.detach().clone()
    estimator = npe.append_simulations(theta, x).train(max_num_epochs=2)
    assert npe.build_posterior().sample((10,), x=x[:1], show_progress_bars=False).shape == (10, 2)
    assert not torch.equal(estimator.embedding_net[-1][0].weight, initial)  # trained with the flow


# --- Pyro ---------------------------------------------------------------------------------

def test_pyro_distribution_shapes_and_expand():
    pytest.importorskip("pyro")
    from pushforward.integrations.pyro import PyroFlow

    flow = pf.MAF(2, 3, transforms=1, hidden_features=(8,))
    d = PyroFlow(flow, torch.randn(4, 3))
    assert (d.batch_shape, d.event_shape) == ((4,), (2,))
    assert d.rsample((5,)).shape == (5, 4, 2) and d.log_prob(d.sample((5,))).shape == (5, 4)
    wide = d.expand((6, 4))
    x = wide.sample((5,))
    assert wide.batch_shape == (6, 4) and x.shape == (5, 6, 4, 2) and wide.log_prob(x).shape == (5, 6, 4)
    unconditional = PyroFlow(pf.MAF(2, transforms=1, hidden_features=(8,))).expand((3,))
    assert unconditional.rsample((2,)).shape == (2, 3, 2)
    assert unconditional.to_event(1).event_shape == (3, 2)


def test_pyro_svi_with_a_flow_guide_reaches_the_conjugate_posterior():
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as dist
    from pushforward.integrations.pyro import PyroFlow

    X, y, sigma, posterior = example("pyro_svi").regression()
    mean, cov = posterior.mean, posterior.covariance_matrix

    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))  # (*particles, 1, 2) when vectorised
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal((w * X).sum(-1), sigma), obs=y)

    torch.manual_seed(0)
    pyro.clear_param_store()
    flow = pf.IAF(2, transforms=2, hidden_features=(16,))

    def guide():
        pyro.module("flow", flow)
        pyro.sample("w", PyroFlow(flow))

    # vectorised particles: Pyro expands the guide's distribution to (32, 1) inside a plate
    elbo = pyro.infer.Trace_ELBO(num_particles=32, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    for _ in range(500):
        svi.step()
    samples = flow.sample((20000,))
    torch.testing.assert_close(samples.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), cov, atol=0.003, rtol=0.2)  # correlation -0.84
