"""VAEs with flow posteriors: amortised log q, the ELBO and importance-weighted bounds, data, `pushforward vae`."""

import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pushforward import vae
from pushforward.data import BinaryImages
from pushforward.cli.vae import vae as vae_command
from pushforward import testing
from cli_helpers import invoke, tensorboard_scalars
from pushforward.testing import perturb

def tiny(posterior="gaussian", **kwargs):
    model = vae.VAE(12, 3, posterior, hidden_features=(10, 6), transforms=2, flow_hidden_features=(8,), columns=2,
                    reflections=2, **kwargs).double()
    perturb(model.posterior, seed=1)  # away from the identity, so the flow layers matter
    return model


def binary(n=8, features=12, seed=0):
    return torch.bernoulli(torch.full((n, features), 0.3, dtype=torch.float64),
                           generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("posterior", vae.POSTERIORS)
def test_posterior_log_q_matches_the_flow_density_in_its_amortised_form(posterior):
    model, x = tiny(posterior), binary()
    z, log_q = model.posterior_sample(x, samples=4)
    assert z.shape == (4, 8, 3) and log_q.shape == (4, 8)
    h = model.encoder(x)
    # the broadcast (S, B) form equals the flow's own density at the expanded context (numerical inverses included)
    torch.testing.assert_close(log_q, model.posterior.log_prob(z, h.expand(4, *h.shape)), atol=1e-8, rtol=1e-8)
    torch.manual_seed(3)
    z0 = model.posterior.base.rsample((4, 8))
    torch.manual_seed(3)
    z_broadcast, _ = model.posterior_sample(x, samples=4)
    torch.testing.assert_close(z_broadcast, model.posterior.transform(z0, h.expand(4, *h.shape))[0])
    # the registry's checks on the whole amortised posterior chain, in float64 with the encoder's context
    testing.check_round_trip(model.posterior.transform, z0[0].detach(), h.detach())
    testing.check_ladj(model.posterior.transform, z0[0, :3].detach(), h[:3].detach())
    model.loss(x, beta=0.5).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in [p.grad for p in model.posterior.parameters()])


def test_elbo_is_below_the_importance_weighted_bound_which_rises_with_samples():
    model, x = tiny("planar"), binary()
    with torch.no_grad():
        log_w = model.log_weights(x, 50)
        elbo = log_w.mean(0)
        iw = torch.logsumexp(log_w, 0) - math.log(50)
        assert (elbo <= iw + 1e-12).all()
        bounds = {k: torch.stack([(torch.logsumexp(model.log_weights(x, k), 0) - math.log(k)).mean()
                                  for _ in range(60)]) for k in (1, 5, 50)}
    means = {k: float(v.mean()) for k, v in bounds.items()}
    ses = {k: float(v.std()) / math.sqrt(60) for k, v in bounds.items()}
    assert means[1] + 2 * (ses[1] + ses[5]) < means[5] and means[5] + 2 * (ses[5] + ses[50]) < means[50]


def test_evaluate_vae_reports_both_figures():
    model = tiny("sylvester-orthogonal")
    result = vae.evaluate_vae(model, binary(10).float(), samples=30, batch_size=4, sample_batch=7)
    assert result.n_examples == 10 and result.samples == 30
    assert result.nll <= result.neg_elbo and result.nll > 0
    assert math.isfinite(result.nll_stderr) and math.isfinite(result.neg_elbo_stderr)


def test_flow_prior_and_errors():
    model = tiny("iaf", prior="maf", prior_transforms=1)
    x = binary()
    assert model.log_weights(x, 3).shape == (3, 8)
    model.loss(x).backward()
    assert model.sample(5).shape == (5, 12)
    with pytest.raises(ValueError, match="unknown posterior"):
        vae.VAE(12, 3, "radial-ish")
    with pytest.raises(ValueError, match="unknown prior"):
        vae.VAE(12, 3, prior="nope")
    with pytest.raises(ValueError, match="columns"):
        vae.posterior_flow("sylvester-orthogonal", 3, 4, columns=5)


def test_fit_vae_improves_the_validation_elbo():
    torch.manual_seed(0)
    prototypes = torch.rand(3, 16).round()
    grey = (0.9 * prototypes[torch.randint(0, 3, (300,))] + 0.05).float()
    data = BinaryImages(grey, torch.bernoulli(grey[:60]), torch.bernoulli(grey[:60]), (1, 4, 4))
    model = vae.VAE(16, 2, "planar", hidden_features=(16,), transforms=2)
    model.init_decoder_bias(grey.mean(0))
    start = vae._neg_elbo(model, data.valid, 100, "cpu")
    result = vae.fit_vae(model, data, epochs=10, batch_size=30, lr=1e-2, warmup=2, progress=False)
    assert result.stopped == "epochs" and len(result.history) == 10
    assert [h["beta"] for h in result.history][-1] == 1.0
    assert result.best_valid < start - 1


def write_idx(path, array, magic_type=0x08):
    header = struct.pack(">HBB", 0, magic_type, array.ndim) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def fake_mnist(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for stem, n in (("train", 60), ("t10k", 12)):
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", rng.randint(0, 256, (n, 6, 6)))
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", rng.randint(0, 10, (n,)))
    return folder


def test_cli_vae_end_to_end(fake_mnist, tmp_path):
    out = tmp_path / "run"
    args = ["--posterior", "sylvester-orthogonal", "--data-dir", fake_mnist, "--latent", "4", "--hidden-features", "16",
            "--transforms", "2", "--columns", "3", "--epochs", "2", "--batch-size", "10", "--iw-samples", "20",
            "--quiet", "--json", "--out", out]
    result = CliRunner().invoke(vae_command, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert line["n_examples"] == 12 and line["samples"] == 20 and line["nll"] <= line["neg_elbo"]
    for name in ("config.json", "model.pt", "metrics.json", "learning_curve.png", "samples.png"):
        assert (out / name).is_file(), name
    model, config = vae.load_vae(out)
    assert config["model"]["posterior"] == "sylvester-orthogonal" and not model.training
    again = CliRunner().invoke(vae_command, [str(a) for a in args])
    assert again.exit_code == 1 and "already holds a run" in again.output
    missing = CliRunner().invoke(vae_command, ["--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "m")])
    assert missing.exit_code == 1 and not (tmp_path / "m").exists()


def test_cli_vae_logs_to_tensorboard(fake_mnist, tmp_path):
    args = ["--data-dir", fake_mnist, "--latent", "2", "--hidden-features", "8", "--epochs", "2", "--batch-size", "25",
            "--iw-samples", "2", "--test-examples", "2", "--quiet", "--json", "--tensorboard", tmp_path / "tb",
            "--out", tmp_path / "run"]
    invoke(vae_command, *args)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["tensorboard"] == str(tmp_path / "tb")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    logged = tensorboard_scalars(tmp_path / "tb")
    for key in ("train_loss", "valid_neg_elbo", "beta"):
        assert logged[key] == [(2 * h["epoch"], pytest.approx(h[key], rel=1e-6)) for h in history], key
