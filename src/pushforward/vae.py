r"""Variational auto-encoders whose approximate posterior q(z | x) is a flow amortised from x.

The encoder maps x to a context h (its last hidden layer); the posterior flow's parameters are
affine functions of h (:class:`~pushforward.nn.parameters.ContextParameters`): a diagonal
Gaussian q0 = N(mu(h), diag sigma(h)^2) (an element-wise affine layer) followed by K flow
layers. The decoder gives Bernoulli probabilities of the pixels; the prior p(z) is N(0, I) or
a flow. Training minimises the negative ELBO

    -ELBO(x) = -E_q[log p(x | z)] + E_q[log q(z | x) - log p(z)]

with one reparametrised sample per example, the KL term by Monte Carlo and a warm-up of its
weight beta from 0 to 1. Evaluation reports, in nats per test example, the negative ELBO and
the importance-weighted estimate of -log p(x) = -log (1/S) sum_s p(x, z_s) / q(z_s | x) with
S = 5000 samples (Burda et al. 2016), as van den Berg et al. 2018 (table 1) report them.

Posteriors (:data:`POSTERIORS`): "gaussian" (no flow), "planar", "iaf", "householder",
"ccliaf" (convex-combination linear IAF), "sylvester-orthogonal", "sylvester-householder",
"sylvester-triangular". The data: :func:`pushforward.data.binarized_mnist`; the training
loop: :func:`pushforward.engine.train`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checks import check_arguments
from .config import VaeConfig, read_config
from .core import Chain, Flow
from .data.images import BinaryImages
from .engine import Loss, Step, Validation, train
from .distributions import StandardNormal
from .flows import IAF, PRESETS, HouseholderFlow, PlanarFlow, SylvesterFlow
from .transforms.elementwise import AffineMap, Elementwise
from .transforms.linear import ConvexCombinationTriangular

__all__ = ["VAE", "POSTERIORS", "posterior_flow", "fit_vae", "VAEFitResult", "evaluate_vae", "VAEEvaluation",
           "load_vae"]

POSTERIORS = ("gaussian", "planar", "iaf", "householder", "ccliaf", "sylvester-orthogonal", "sylvester-householder",
              "sylvester-triangular")
# Number of layers K (components for ccliaf, reflections for householder) when not given.
_DEFAULT_TRANSFORMS = {"gaussian": 0, "planar": 16, "iaf": 4, "householder": 10, "ccliaf": 5,
                       "sylvester-orthogonal": 16, "sylvester-householder": 16, "sylvester-triangular": 16}


def _gaussian(latent: int, context_features: int) -> Elementwise:
    """q0 = N(mu(h), diag sigma(h)^2) as an element-wise affine layer amortised from h."""
    return Elementwise(AffineMap(), latent, context_features)


def posterior_flow(name: str, latent: int, context_features: int, transforms: int | None = None,
                   hidden_features: Sequence[int] = (320, 320), columns: int | None = 32,
                   reflections: int = 8) -> Flow:
    r"""The amortised posterior flow q(z | h) named ``name``, with context h.

    Every posterior starts with q0 = N(mu(h), diag sigma(h)^2); then:
    "gaussian": nothing; "planar": K planar layers (Rezende & Mohamed 2015);
    "iaf": K affine IAF layers whose MADEs also take h (Kingma et al. 2016);
    "householder": K Householder reflections (Tomczak & Welling 2016); "ccliaf": the
    volume-preserving x = L(h) z, L a convex combination of K unit lower-triangular matrices
    (Tomczak & Welling 2017); "sylvester-*": K Sylvester layers with orthogonal Q of ``columns``
    columns, Q a product of ``reflections`` reflections, or Q alternating identity/reversal
    (van den Berg et al. 2018). All parameters except the MADEs' and ccLinIAF's matrices are
    affine in h.

    Shapes: samples (*shape, *batch, latent); context h (*batch, context_features).

    Args:
        name: one of :data:`POSTERIORS`.
        latent: the dimension of z.
        context_features: the size of h.
        transforms: K (default: 16 planar and Sylvester layers, 4 IAF layers, 10
            reflections, 5 ccLinIAF components).
        hidden_features: the hidden layers of the IAF's MADEs.
        columns: M of orthogonal Sylvester layers (van den Berg et al. use 32; None: latent).
        reflections: reflections per Householder Sylvester layer (van den Berg et al.: 8).

    Raises:
        ValueError: for an unknown name, or columns > latent.
    """
    if name not in POSTERIORS:
        raise ValueError(f"unknown posterior {name!r} (known: {', '.join(POSTERIORS)})")
    k = _DEFAULT_TRANSFORMS[name] if transforms is None else transforms
    c = context_features
    if name == "gaussian":
        return Flow(StandardNormal(latent), _gaussian(latent, c))
    if name == "planar":
        return PlanarFlow(latent, c, transforms=k)
    if name == "householder":
        return HouseholderFlow(latent, c, transforms=k)
    if name == "iaf":
        layers = IAF(latent, c, transforms=k, hidden_features=hidden_features).transform
        return Flow(StandardNormal(latent), Chain(_gaussian(latent, c), layers))
    if name == "ccliaf":
        return Flow(StandardNormal(latent), Chain(_gaussian(latent, c), ConvexCombinationTriangular(latent, k, c)))
    kind = name.split("-")[1]
    if kind == "orthogonal" and columns is not None and columns > latent:
        raise ValueError(f"columns={columns} exceeds the latent dimension {latent}")
    return SylvesterFlow(latent, c, transforms=k, kind=kind, columns=columns, reflections=reflections)


def _mlp(sizes: Sequence[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    r"""VAE for binary data with a flow posterior q(z | x) and a Bernoulli decoder.

    encoder: x -> h, an MLP whose last (activated) hidden layer is the context of the
    posterior flow; q(z | x) = :func:`posterior_flow` at h; decoder: z -> logits of
    p(x | z) = prod_i Bernoulli(x_i; sigmoid(logit_i)), an MLP with the mirrored hidden
    sizes; prior p(z) = N(0, I), or the preset flow ``prior`` (its density is evaluated in
    its inverse direction: choose one for which that is cheap, e.g. maf, realnvp, nsf).

    The posterior's parameters are computed once per example and broadcast over the samples
    of that example: with S samples, the flow layers see z (S, B, latent) and h (B, H).

    Shapes: x (B, features) with values in {0, 1} (or [0, 1]); log-densities in nats.

    Reference: Kingma & Welling. Auto-encoding variational Bayes. ICLR 2014; Rezende &
    Mohamed. Variational inference with normalizing flows. ICML 2015, section 4; van den
    Berg, Hasenclever, Tomczak & Welling. Sylvester normalizing flows for variational
    inference. UAI 2018, section 5.

    Args:
        features: the data dimension (784 for MNIST).
        latent: the dimension of z (64 in van den Berg et al.).
        posterior: one of :data:`POSTERIORS`.
        hidden_features: the encoder's hidden sizes (the decoder's reversed).
        context_features: the size of the context h: one more ELU layer of the encoder (the
            flow's parameters are affine in h, so their number grows with it); None: h is
            the last hidden layer.
        transforms, flow_hidden_features, columns, reflections: of :func:`posterior_flow`.
        prior: None (N(0, I)) or a name of :data:`~pushforward.flows.PRESETS`.
        prior_transforms: the prior flow's number of layers (default: the preset's).

    Raises:
        ValueError: for an unknown posterior or prior.
    """

    def __init__(self, features: int = 784, latent: int = 64, posterior: str = "gaussian",
                 hidden_features: Sequence[int] = (300, 300), context_features: int | None = None,
                 transforms: int | None = None,
                 flow_hidden_features: Sequence[int] = (320, 320), columns: int | None = 32, reflections: int = 8,
                 prior: str | None = None, prior_transforms: int | None = None):
        super().__init__()
        if prior is not None and prior not in PRESETS:
            raise ValueError(f"unknown prior {prior!r}: use a preset ({', '.join(sorted(PRESETS))}) or None")
        hidden = list(hidden_features)
        context = [] if context_features is None else [context_features]
        self.encoder = _mlp([features, *hidden, *context], last_activation=True)
        self.posterior = posterior_flow(posterior, latent, (context or hidden)[-1], transforms, flow_hidden_features,
                                        columns if columns is None else min(columns, latent), reflections)
        self.decoder = _mlp([latent, *reversed(hidden), features], last_activation=False)
        if prior is None:
            self.prior: nn.Module = StandardNormal(latent)
        else:
            options = {} if prior_transforms is None else {"transforms": prior_transforms}
            self.prior = PRESETS[prior](latent, **options)
        self.features, self.latent = features, latent

    def init_decoder_bias(self, mean: Tensor) -> None:
        """Set the decoder's output bias to logit(mean pixel), so training starts at the marginals."""
        p = mean.clamp(1e-3, 1 - 1e-3).to(self.decoder[-1].bias)
        with torch.no_grad():
            self.decoder[-1].bias.copy_(torch.log(p) - torch.log1p(-p))

    def posterior_sample(self, x: Tensor, samples: int = 1) -> tuple[Tensor, Tensor]:
        """z ~ q(z | x) with log q(z | x), reparametrised; shapes (samples, B, latent), (samples, B)."""
        h = self.encoder(x)
        z0 = self.posterior.base.rsample((samples, len(x)))
        z, ladj = self.posterior.transform(z0, h)
        return z, self.posterior.base.log_prob(z0) - ladj

    def log_likelihood_given(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) = -sum_i BCE(logit_i(z), x_i); shapes x (B, F), z (S, B, latent) -> (S, B)."""
        logits = self.decoder(z)
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    def terms(self, x: Tensor, samples: int = 1) -> tuple[Tensor, Tensor]:
        """(log p(x | z), log p(z) - log q(z | x)) at z ~ q(z | x), each (samples, B), in nats."""
        z, log_q = self.posterior_sample(x, samples)
        return self.log_likelihood_given(x, z), self.prior.log_prob(z) - log_q

    def log_weights(self, x: Tensor, samples: int) -> Tensor:
        """log w_s = log p(x, z_s) - log q(z_s | x), z_s ~ q(z | x); shape (samples, B)."""
        reconstruction, kl_term = self.terms(x, samples)
        return reconstruction + kl_term

    def loss(self, x: Tensor, beta: float = 1.0) -> Tensor:
        r"""The (warmed-up) negative ELBO per example, one sample: -mean[log p(x|z) + beta (log p(z) - log q(z|x))]."""
        reconstruction, kl_term = self.terms(x, 1)
        return -(reconstruction + beta * kl_term).mean()

    def sample(self, n: int) -> Tensor:
        """Pixel probabilities sigmoid(decoder(z)) of n draws z ~ p(z), shape (n, features)."""
        with torch.no_grad():
            return torch.sigmoid(self.decoder(self.prior.sample((n,))))


# --- training ------------------------------------------------------------------------------

@dataclass
class VAEEvaluation:
    r"""Test figures of a VAE, in nats per example: the negative ELBO and the
    importance-weighted estimate of -log p(x), each with its standard error over the examples,
    from ``samples`` posterior samples per example (the ELBO as the mean of their log-weights)."""

    neg_elbo: float
    neg_elbo_stderr: float
    nll: float
    nll_stderr: float
    n_examples: int
    samples: int


def evaluate_vae(model: VAE, x: Tensor, samples: int = 5000, batch_size: int = 100, sample_batch: int = 500,
                 progress: bool = False) -> VAEEvaluation:
    r"""Negative ELBO and importance-weighted -log p(x) of each example, averaged, in nats.

    For each example, S = ``samples`` draws z_s ~ q(z | x) give log w_s = log p(x, z_s) -
    log q(z_s | x); -ELBO^ = -mean_s log w_s and -log p^(x) = -logmeanexp_s log w_s, an upper
    bound on -log p(x) in expectation that tightens as S grows (Burda et al. 2016, theorem 1).
    The draws are taken ``sample_batch`` at a time, on the model's device; runs without
    gradients, in eval mode. Cost: S decoder passes per example (about 30 minutes for the
    10,000 MNIST test images with S = 5000 and the default MLP on a 2-core CPU).

    Shapes: x (N, features).

    Reference: Burda, Grosse & Salakhutdinov. Importance weighted autoencoders. ICLR 2016.
    """
    param = next(model.parameters())
    device = param.device
    was_training = model.training
    model.eval()
    nll, elbo = [], []
    bar = tqdm(range(0, len(x), batch_size), desc="evaluate", disable=not progress, leave=False, file=sys.stderr)
    with torch.no_grad():
        for i in bar:
            xb = x[i : i + batch_size].to(device, param.dtype)
            log_w = torch.cat([model.log_weights(xb, min(sample_batch, samples - s)).double()
                               for s in range(0, samples, sample_batch)])
            nll.append((math.log(samples) - torch.logsumexp(log_w, 0)).cpu())
            elbo.append(log_w.mean(0).cpu())
    model.train(was_training)
    nll_t, elbo_t = torch.cat(nll), -torch.cat(elbo)
    n = len(nll_t)
    se = (lambda t: float(t.std() / math.sqrt(n)) if n > 1 else float("nan"))
    return VAEEvaluation(float(elbo_t.mean()), se(elbo_t), float(nll_t.mean()), se(nll_t), n, samples)


def _neg_elbo(model: VAE, x: Tensor, batch_size: int, device) -> float:
    """Mean single-sample negative ELBO of x (nats), without gradients."""
    param = next(model.parameters())
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device, param.dtype)
            total += float(-model.log_weights(xb, 1).sum())
    return total / len(x)


@dataclass
class VAEFitResult:
    """What :func:`fit_vae` did: the per-epoch ``history`` (mean training loss, beta, the
    validation negative ELBO in nats, seconds), the best epoch and its validation negative
    ELBO, why it stopped ("epochs", "early stopping", "time budget", "interrupted"), seconds."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_valid: float = math.inf
    stopped: str = ""
    seconds: float = 0.0


def fit_vae(model: VAE, data: BinaryImages, *, epochs: int = 1000, batch_size: int = 100, lr: float = 5e-4,
            warmup: float = 10.0, patience: int | None = 100, max_minutes: float | None = None, seed: int = 0,
            clip_grad: float | None = None, device: str | torch.device = "cpu", progress: bool = True,
            verbose: bool = False, on_best=None, tensorboard_dir: str | os.PathLike | None = None) -> VAEFitResult:
    r"""Train the VAE with Adam on the warmed-up negative ELBO; keep the best validation weights.

    Each mini-batch of ``data.train`` is binarized anew (x ~ Bernoulli(grey)); the KL term's
    weight beta rises linearly from 0 to 1 over the first ``warmup`` epochs (van den Berg et
    al. 2018 use 100; Sønderby et al. 2016). After every epoch the single-sample negative
    ELBO of ``data.valid`` (beta = 1) decides the best weights, which are restored at the end
    (also after Ctrl-C). The loop is the training engine's (:func:`pushforward.engine.train`).

    Args:
        model: trained in place (moved to ``device``).
        data: the binary images.
        epochs, batch_size, lr: the largest number of epochs, the mini-batch size, Adam's rate.
        warmup: epochs of the beta warm-up (0: beta = 1 from the start).
        patience: epochs without validation improvement before stopping (None: never).
        max_minutes: wall-clock budget, checked after every step.
        seed: seeds torch's global generator (weights are already drawn; this fixes the
            batches, the binarization and the posterior samples).
        clip_grad: largest gradient norm, or None.
        device: where to train.
        progress, verbose: a progress bar; one line per epoch on stderr.
        on_best: called with the model whenever the validation figure improves (e.g. to save it).
        tensorboard_dir: log TensorBoard scalars there (train loss, validation -ELBO, beta,
            learning rate, seconds; :func:`pushforward.engine.train`).

    Raises:
        ValueError: for a number out of its range (epochs, batch_size, patience >= 1; lr,
            clip_grad, max_minutes > 0; warmup >= 0), or if the loss becomes NaN/inf.
    """
    check_arguments(epochs=epochs, batch_size=batch_size, lr=lr, warmup=warmup, patience=patience,
                    max_minutes=max_minutes, clip_grad=clip_grad)
    torch.manual_seed(seed)
    model.to(device)
    dtype = next(model.parameters()).dtype
    n = len(data.train)
    steps = math.ceil(n / batch_size)
    warmup_steps = warmup * steps

    def batches(epoch: int) -> list[tuple[int, Tensor]]:
        """(index of the step since the start, rows of data.train) of each step of the epoch."""
        return list(enumerate(torch.randperm(n).split(batch_size), epoch * steps))

    def step(forward, batch: tuple[int, Tensor]) -> Step:
        index, rows = batch
        x = torch.bernoulli(data.train[rows]).to(device, dtype)
        beta = min(1.0, (index + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        loss = model.loss(x, beta)
        return Step(loss=loss, total=loss.item() * len(x), count=len(x), last={"beta": beta})

    validation = Validation(lambda entry: _neg_elbo(model, data.valid, 1000, device), "valid_neg_elbo",
                            maximize=False)
    run = train(model, Loss(step, batches), validation, epochs=epochs, lr=lr, clip_grad=clip_grad, patience=patience,
                max_minutes=max_minutes, progress=progress, verbose=verbose, tensorboard_dir=tensorboard_dir,
                on_best=on_best)
    return VAEFitResult(run.history, run.best_epoch, run.best_valid, run.stopped, run.seconds)


def load_vae(out: str | Path) -> tuple[VAE, dict]:
    """Rebuild the VAE of a ``pushforward vae`` run folder from config.json (its "model" entry,
    the arguments of :class:`VAE`) and model.pt, in eval mode.

    Raises:
        FileNotFoundError: if the folder, its config or its weights are missing.
        ValueError: if the config does not match its schema (:mod:`pushforward.config`, the
            message names the key), is not a vae run's, or the weights are corrupted or do not match.
    """
    out = Path(out)
    config = read_config(out)
    if not isinstance(config, VaeConfig):
        raise ValueError(f"'{out}' is not a pushforward vae run")
    if not (out / "model.pt").is_file():
        raise FileNotFoundError(f"{out / 'model.pt'} not found: is '{out}' a complete pushforward vae run folder?")
    try:
        model = VAE(**config.model)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{out / 'config.json'} is corrupted ({type(e).__name__}: {e})") from None
    config = config.model_dump(mode="json")
    try:
        model.load_state_dict(torch.load(out / "model.pt", map_location="cpu", weights_only=True))
    except Exception as e:  # torch raises several types for a damaged file
        raise ValueError(f"{out / 'model.pt'} is corrupted or does not match the config ({type(e).__name__})") from None
    return model.eval(), config
