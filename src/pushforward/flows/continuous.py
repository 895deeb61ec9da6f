r"""FFJORD: a continuous normalizing flow, a stack of ODE blocks (:mod:`pushforward.transforms.continuous`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..checks import check_arguments
from ..core import Flow
from ..distributions import preset_base
from ..transforms.continuous import ContinuousFlow
from .stack import stack

__all__ = ["FFJORD"]


class FFJORD(Flow):
    r"""FFJORD: a stack of continuous normalizing flow blocks dz/dt = f_k(z, t, c).

    Each block integrates its ODE from t = 0 to T with an adaptive solver (dopri5 by default);
    the log-abs-det-Jacobian is the integral of tr(df/dz), estimated in training by
    Hutchinson's estimator with noise fixed within each solve, and exact in evaluation mode
    (``evaluation_trace``), so reported log-likelihoods are exact
    (:class:`~pushforward.transforms.continuous.ContinuousFlow`).
    ``kinetic`` and ``jacobian`` add Finlay et al.'s regularisers of the dynamics to the
    training loss of :func:`pushforward.fit` (which also reports the number of function
    evaluations, NFE, per training step in its history).

    Shapes: x (*batch, features); context (*batch, context_features); log_prob (*batch,) nats.

    Reference: Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud. FFJORD: free-form continuous
    dynamics for scalable reversible generative models. ICLR 2019 (the defaults here: one
    block of 3 x 64 tanh units, as for the paper's 2-D densities; the tabular experiments
    stack several blocks of softplus MLPs, with batch norm between them as an option).
    arXiv:1810.01367. Finlay, Jacobsen, Nurbekyan & Oberman. How to train your neural ODE.
    ICML 2020. arXiv:2002.02798.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number of continuous blocks.
        hidden_features: hidden layer sizes of each block's f.
        activation: f's non-linearity (smooth: Softplus, Tanh, ...).
        time_dependent: whether f takes t.
        time: each block's integration time T.
        trace: "hutchinson" or "exact", in training.
        evaluation_trace: "exact" (default: reported likelihoods are exact) or "hutchinson", in
            evaluation mode (faster for large D, an unbiased estimate of the ladj).
        noise: "gaussian" or "rademacher", Hutchinson's noise.
        method, rtol, atol, step_size: the torchdiffeq solver and its tolerances (or step).
        adjoint: back-propagate by the adjoint method (memory constant in the number of steps;
            off by default: on a CPU, back-propagating through the solver is faster).
        kinetic, jacobian: the weights of the kinetic-energy and Jacobian-norm regularisers.
        normalization: "batch", "act" or None between blocks.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.

    Raises:
        ValueError: as :class:`~pushforward.transforms.continuous.ContinuousFlow`, or for an
            unknown ``normalization``.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 1,
                 hidden_features: Sequence[int] = (64, 64, 64), activation: type[nn.Module] = nn.Tanh,
                 time_dependent: bool = True, time: float = 1.0, trace: str = "hutchinson", noise: str = "gaussian",
                 evaluation_trace: str = "exact", method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                 step_size: float | None = None, adjoint: bool = False, kinetic: float = 0.0, jacobian: float = 0.0,
                 normalization: str | None = None, base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms,
                        hidden_features=hidden_features)
        blocks = [ContinuousFlow(features, context_features, hidden_features, time_dependent, activation, time,
                                 trace, noise, evaluation_trace, method, rtol, atol, step_size, adjoint, kinetic=kinetic,
                                 jacobian=jacobian)
                  for _ in range(transforms)]
        super().__init__(*preset_base(base, features, stack(blocks, features, normalization)), embedding)
