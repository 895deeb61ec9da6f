r"""Variational inference: fit a flow q to an unnormalized density p~ and estimate log Z.

:func:`fit_vi` maximises the evidence lower bound

    ELBO(q) = E_q[log p~(x) - log q(x)] = log Z - KL(q || p),   p = p~ / Z,

with reparametrised samples x = g(z), z ~ base, drawn together with their log-density in one
forward pass (:meth:`~pushforward.core.Flow.rsample_and_log_prob`), so flows whose cheap
direction is sampling (IAF, planar, radial, Sylvester, coupling) are all usable. The target
can be annealed (Rezende & Mohamed 2015) and the gradient can "stick the landing" (Roeder et
al. 2017). :func:`estimate_log_z` then gives the importance-sampling estimate of log Z with
its standard error and effective sample size.

    >>> import torch, pushforward as pf
    >>> from pushforward import targets, vi
    >>> target = targets.get_target("u1")       # Rezende & Mohamed's U1, log Z = 1.8775
    >>> flow = pf.PlanarFlow(2, transforms=4)
    >>> result = vi.fit_vi(flow, target.log_prob, steps=50, samples=64, lr=1e-2, progress=False)
    >>> estimate = vi.estimate_log_z(flow, target.log_prob, n=1000)
    >>> estimate.elbo < estimate.log_z, estimate.n
    (True, 1000)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .checks import check_arguments
from .core import Flow
from .engine import Loss, Step, cosine_schedule, train

__all__ = ["fit_vi", "VIResult", "elbo", "estimate_log_z", "LogZEstimate", "annealing"]

LogTarget = Callable[[Tensor], Tensor]


class _LogProb(nn.Module):
    """``flow.log_prob`` as a module's forward, for :func:`torch.func.functional_call`."""

    def __init__(self, flow: Flow):
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)


def _log_q_detached(flow: Flow, x: Tensor) -> Tensor:
    """log q(x) with the flow's parameters detached: gradients reach x only (the STL estimator)."""
    params = {f"flow.{name}": p.detach() for name, p in flow.named_parameters()}
    return torch.func.functional_call(_LogProb(flow), params, (x,), strict=False)


def _terms(flow: Flow, log_target: LogTarget, samples: int, stl: bool) -> tuple[Tensor, Tensor]:
    """(log p~(x), log q(x)) at ``samples`` reparametrised draws x ~ q, each (samples,)."""
    x, log_q = flow.rsample_and_log_prob((samples,))
    if stl:
        log_q = _log_q_detached(flow, x)
    return log_target(x), log_q


def elbo(flow: Flow, log_target: LogTarget, samples: int = 1000, *, beta: float = 1.0, stl: bool = False) -> Tensor:
    r"""Monte Carlo estimate of the (annealed) ELBO, differentiable with respect to the flow.

    ELBO_beta = (1 / S) sum_s [beta log p~(x_s) - log q(x_s)], x_s = g(z_s), z_s ~ base; an
    unbiased estimate of E_q[beta log p~ - log q], which is log Z - KL(q || p) at beta = 1.
    With ``stl`` the value is the same, but log q is evaluated at x_s with the flow's
    parameters detached (through the flow's inverse), so the gradient drops the score term
    E_q[d log q_theta / d theta] = 0 and has a lower variance, zero when q = p
    (sticking the landing).

    Shapes: log_target maps x (S, dim) to (S,); returns a scalar tensor, in nats.

    Reference: Rezende & Mohamed. Variational inference with normalizing flows. ICML 2015,
    eq. (15) and section 6.1 (annealing); Roeder, Wu & Duvenaud. Sticking the landing: simple,
    lower-variance gradient estimators for variational inference. NeurIPS 2017, eq. (8).

    Args:
        flow: the variational distribution q (unconditional).
        log_target: log p~, the unnormalized log-density (nats).
        samples: S.
        beta: the inverse temperature of the target, in (0, 1].
        stl: the sticking-the-landing gradient (needs the flow's inverse: a numerical one
            for planar and Sylvester layers, D passes for IAF layers).
    """
    log_p, log_q = _terms(flow, log_target, samples, stl)
    return (beta * log_p - log_q).mean()


def annealing(step: int, anneal_steps: int, beta0: float = 0.01) -> float:
    r"""The inverse temperature at ``step`` (0-based): beta_t = min(1, beta0 + (1 - beta0) t / anneal_steps).

    Rezende & Mohamed 2015 (section 6.1) use beta_t = min(1, 0.01 + t / 10000); with
    ``anneal_steps`` = 0 there is no annealing (beta = 1).
    """
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, beta0 + (1 - beta0) * step / anneal_steps)


@dataclass
class VIResult:
    """What :func:`fit_vi` did: ``history`` (one entry per ``record_every`` steps with the
    step, the mean ELBO at beta = 1 and the annealed objective over those steps, beta, and
    the seconds), why it stopped ("steps", "time budget", "interrupted"), the number of
    steps done and the seconds."""

    history: list[dict] = field(default_factory=list)
    stopped: str = ""
    steps: int = 0
    seconds: float = 0.0


def fit_vi(
    flow: Flow,
    log_target: LogTarget,
    *,
    steps: int = 10_000,
    samples: int = 256,
    lr: float = 1e-3,
    beta0: float = 0.01,
    anneal_steps: int = 0,
    stl: bool = False,
    schedule: str | None = None,
    clip_grad: float | None = None,
    max_minutes: float | None = None,
    seed: int | None = 0,
    progress: bool = True,
    record_every: int | None = None,
    tensorboard_dir: str | os.PathLike | None = None,
) -> VIResult:
    r"""Fit ``flow`` to the unnormalized density exp(log_target) by maximising the ELBO with Adam.

    Each step draws ``samples`` reparametrised samples x ~ q with their log q in one forward
    pass and ascends the annealed ELBO E_q[beta_t log p~(x) - log q(x)], beta_t given by
    :func:`annealing`, through the training engine (:func:`pushforward.engine.train`; Ctrl-C
    stops with the steps done, dropping the history entry in progress). The flow stays on its device and dtype, and is left in eval mode;
    ``seed`` seeds torch's global generator (the base samples).

    Shapes: log_target maps x (S, dim) to (S,), in nats.

    Reference: Rezende & Mohamed. Variational inference with normalizing flows. ICML 2015,
    section 6.1; Roeder, Wu & Duvenaud. Sticking the landing. NeurIPS 2017.

    Args:
        flow: the variational distribution q, trained in place (unconditional).
        log_target: log p~.
        steps: the number of gradient steps.
        samples: Monte Carlo samples per step.
        lr: Adam's learning rate.
        beta0, anneal_steps: beta rises linearly from beta0 to 1 over ``anneal_steps``
            steps (0: no annealing).
        stl: the sticking-the-landing gradient (see :func:`elbo`).
        schedule: None or "cosine" (the learning rate decays to 0 over ``steps``).
        clip_grad: largest gradient norm, or None.
        max_minutes: wall-clock budget, checked after every step.
        seed: seed of torch's global generator, or None to leave it alone.
        progress: show a progress bar with the running ELBO.
        record_every: steps per history entry (default: steps // 500, at least 1).
        tensorboard_dir: log TensorBoard scalars there (the ELBO, the annealed objective as
            ``train_loss``, beta, the learning rate, seconds; :func:`pushforward.engine.train`).

    Raises:
        ValueError: for an unknown schedule, a number out of its range (steps, samples >= 1;
            lr, clip_grad, max_minutes > 0; beta0 in (0, 1]; anneal_steps >= 0), or an
            objective that becomes NaN/inf (e.g. a target that is -inf where q puts samples).
    """
    scheduler = cosine_schedule(schedule, steps)
    check_arguments(steps=steps, samples=samples, lr=lr, beta0=beta0, anneal_steps=anneal_steps, clip_grad=clip_grad,
                    max_minutes=max_minutes)
    if seed is not None:
        torch.manual_seed(seed)
    record_every = record_every or max(1, steps // 500)

    def step(forward, index: int) -> Step:
        beta = annealing(index, anneal_steps, beta0)
        log_p, log_q = _terms(flow, log_target, samples, stl)
        objective = (beta * log_p - log_q).mean()
        if not torch.isfinite(objective):
            raise ValueError(f"the ELBO became {objective.item()} at step {index + 1}: the target is not finite "
                             "where q puts samples, or the fit diverged (try a smaller learning rate or "
                             "gradient clipping)")
        return Step(loss=-objective, total=-objective.item(), count=1,
                    sums={"elbo": float((log_p - log_q).detach().mean())}, last={"step": index + 1, "beta": beta})

    # An epoch of the engine is a window of record_every steps: one history entry each.
    windows = Loss(step, lambda w: range(w * record_every, min(steps, (w + 1) * record_every)))
    run = train(flow, windows, epochs=math.ceil(steps / record_every), lr=lr, schedule=scheduler,
                schedule_per_step=True, clip_grad=clip_grad, max_minutes=max_minutes, progress=progress,
                progress_total=steps, desc="vi", tensorboard_dir=tensorboard_dir)
    history = [{"step": h["step"], "elbo": h["elbo"], "objective": -h["train_loss"], "beta": h["beta"],
                "seconds": h["seconds"]} for h in run.history]
    return VIResult(history, "steps" if run.stopped == "epochs" else run.stopped, run.steps, run.seconds)


@dataclass
class LogZEstimate:
    r"""Importance-sampling estimate of log Z from n draws of q, in nats.

    ``log_z`` = log (1/n) sum_i w_i, w_i = p~(x_i) / q(x_i); ``stderr`` its delta-method
    standard error sd(w) / (sqrt(n) mean(w)); ``ess`` Kish's effective sample size
    (sum w)^2 / sum w^2, in [1, n]; ``elbo`` = mean log w with ``elbo_stderr`` = sd(log w) / sqrt(n).
    A small ess means q misses mass of p and the stderr is itself unreliable (too small).
    """

    log_z: float
    stderr: float
    ess: float
    elbo: float
    elbo_stderr: float
    n: int


def estimate_log_z(flow: Flow, log_target: LogTarget, n: int = 100_000, batch_size: int = 10_000) -> LogZEstimate:
    r"""Estimate log Z of p~ by importance sampling with the flow q as the proposal.

    log Z^ = logmeanexp_i (log p~(x_i) - log q(x_i)), x_i ~ q, computed in float64 from the
    log-weights. E[Z^] = Z when q > 0 wherever p~ > 0, and log Z^ is consistent (biased low
    by about stderr^2 / 2). Standard error by the delta method on the weights:
    se(log Z^) = sd(w) / (sqrt(n) mean(w)), with sd and mean of the normalised weights.
    Runs without gradients, in eval mode.

    Shapes: log_target maps x (B, dim) to (B,).

    Reference: Kish. Survey sampling. 1965 (effective sample size); Owen. Monte Carlo theory,
    methods and examples. 2013, chapter 9 (importance sampling, delta method).

    Args:
        flow: the proposal q (unconditional).
        log_target: log p~.
        n: the number of draws (at least 2).
        batch_size: draws per forward pass.

    Raises:
        ValueError: for n < 2, or if every weight is zero or a log-weight is NaN/+inf.
    """
    if n < 2:
        raise ValueError(f"estimate_log_z needs at least 2 samples, got {n}")
    was_training = flow.training
    flow.eval()
    chunks = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            x, log_q = flow.sample_and_log_prob((min(batch_size, n - i),))
            chunks.append((log_target(x).double() - log_q.double()).cpu())
    flow.train(was_training)
    log_w = torch.cat(chunks)
    if bool(torch.isnan(log_w).any() or (log_w == math.inf).any()) or not bool(torch.isfinite(log_w).any()):
        raise ValueError("the importance weights are NaN, infinite, or all zero: q and p~ do not overlap")
    log_mean = torch.logsumexp(log_w, 0) - math.log(n)
    w = torch.exp(log_w - log_mean)  # normalised weights, mean 1
    finite = log_w[torch.isfinite(log_w)]
    return LogZEstimate(
        log_z=float(log_mean),
        stderr=float(w.std() / math.sqrt(n)),
        ess=float(w.sum().square() / w.square().sum()),
        elbo=float(log_w.mean()) if len(finite) == n else -math.inf,
        elbo_stderr=float(finite.std() / math.sqrt(n)) if len(finite) == n else math.inf,
        n=n,
    )
