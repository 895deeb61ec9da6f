r"""pushforward flows as Pyro distributions, for models and guides.

:class:`PyroFlow` is a flow (at a fixed context) that ``pyro.sample`` takes: reparametrised
``rsample``, ``log_prob`` in nats, ``expand`` (so that it works inside ``pyro.plate``),
``to_event`` and masking from Pyro's mixin. A flow guide for stochastic variational inference::

    flow = pf.IAF(2, transforms=2)

    def guide(data):
        pyro.module("flow", flow)          # registers the flow's parameters with Pyro
        pyro.sample("w", PyroFlow(flow))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())

Needs the ``pyro`` extra (``pip install -e ".[pyro]"``).

Reference: Bingham et al. Pyro: deep universal probabilistic programming. JMLR 2019.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from . import require

require("pyro", "pyro")

from pyro.distributions.torch_distribution import TorchDistributionMixin  # noqa: E402

from ..core import Flow, FlowDistribution  # noqa: E402

__all__ = ["PyroFlow"]


class PyroFlow(FlowDistribution, TorchDistributionMixin):
    r"""A flow at a fixed context as a Pyro distribution.

    q(x | c) = flow.log_prob(x, c), samples x = g(z, c) reparametrised in the flow's
    parameters. Its support is the real space of the event shape (a flow built with
    ``base="box"`` puts its mass in (0, 1)^D, inside it).

    ``expand(batch_shape)`` returns Pyro's ``ExpandedDistribution``, which draws independent
    samples for the new batch dimensions, as ``pyro.plate`` needs.

    Shapes: context (*batch, context_features) or, with an embedding network, what it takes;
    batch_shape the (embedded) context's batch shape, () without context; event_shape the
    flow's; sample (*sample_shape, *batch_shape, *event_shape); log_prob (*sample_shape,
    *batch_shape) in nats.

    Args:
        flow: any :class:`~pushforward.core.Flow`.
        context: its context, or None.

    Raises:
        ValueError: for a context the flow cannot take (see :meth:`Flow.embed`).
    """

    def __init__(self, flow: Flow, context: Tensor | None = None):
        super().__init__(flow, context)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        """R^event_shape, independent over the event dimensions (also for box flows: see the class
        docstring)."""
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape: torch.Size, _instance=None):
        """This distribution with the batch shape ``batch_shape``, as Pyro expands one (plates)."""
        # torch's Distribution.expand (not implemented) precedes the mixin's in the MRO
        return TorchDistributionMixin.expand(self, batch_shape, _instance)
