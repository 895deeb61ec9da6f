r"""Continuous normalizing flows: the map is the solution of an ODE, integrated by torchdiffeq.

x = z(T) with z(0) = z and dz/dt = f(z(t), t, c), f an MLP of [z, t, c]. By the instantaneous
change of variables (Chen et al. 2018, theorem 1) the log-abs-det-Jacobian of the map is the
integral of the trace of the Jacobian of f along the path,

    log|det dx/dz| = int_0^T tr(df/dz)(z(t), t) dt,

and the same ODE integrated from T back to 0 gives the inverse and minus that integral. Both
are solved together, as one augmented state (z, ladj), by ``torchdiffeq.odeint`` (or
``odeint_adjoint``).

Regularisation and the number of function evaluations (NFE) are reported through
:func:`recording`, a context that the caller opens around a computation (``pushforward.fit``
does, around each training step); the transforms keep no state between calls:

    >>> import torch
    >>> from pushforward.transforms.continuous import ContinuousFlow, recording
    >>> block = ContinuousFlow(2, hidden_features=(8,), kinetic=0.1)
    >>> with recording() as record:
    ...     z, ladj = block.inverse(torch.randn(4, 2))
    >>> record.solves, record.penalty.shape
    (1, torch.Size([4]))
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from ..checks import check_arguments
from ..core import Transform
from ..nn.mlp import MLP, check_context
from .numerical import ConvergenceError

__all__ = ["ContinuousFlow", "SolverRecord", "recording", "ADAPTIVE_METHODS", "FIXED_STEP_METHODS"]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_STEP_METHODS = ("euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams")
_TRACES = ("exact", "hutchinson")
_NOISES = ("gaussian", "rademacher")


@dataclass
class SolverRecord:
    """What the continuous transforms did inside one :func:`recording` context.

    Attributes:
        solves: the number of ODE solves (one per :class:`ContinuousFlow` call).
        nfe_forward: function evaluations of those solves, summed.
        nfe_backward: function evaluations back-propagated through (direct back-propagation:
            the evaluations of the accepted steps, counted as autograd reaches them) or of the
            adjoint solves (``adjoint=True``); it grows while ``loss.backward()`` runs, so read
            it after.
        kinetic, jacobian: per solve of a regularised transform (``kinetic`` or ``jacobian``
            weight > 0), the integrals int ||f||^2 dt and int ||df/dz||_F^2 dt along the path,
            each (*batch,), unweighted.
        penalty: sum over the solves of kinetic weight × kinetic + jacobian weight × jacobian,
            (*batch,), or the float 0.0 where no transform is regularised; the training loss
            is mean(-log p + penalty) (Finlay et al. 2020).
    """

    solves: int = 0
    nfe_forward: int = 0
    nfe_backward: int = 0
    kinetic: list[Tensor] = field(default_factory=list)
    jacobian: list[Tensor] = field(default_factory=list)
    penalty: Tensor | float = 0.0


_RECORD: contextvars.ContextVar[SolverRecord | None] = contextvars.ContextVar("pushforward_solver_record",
                                                                                default=None)


@contextlib.contextmanager
def recording() -> Iterator[SolverRecord]:
    """Record the NFE and the regularisers of the continuous transforms called inside the context.

    Outside such a context the regularisers are not integrated at all (they cost two more
    components of the ODE state). Contexts nest: an inner one records its own calls only.

    Yields:
        A fresh :class:`SolverRecord`.
    """
    record = SolverRecord()
    token = _RECORD.set(record)
    try:
        yield record
    finally:
        _RECORD.reset(token)


def _map_norm(state: tuple[Tensor, ...]) -> Tensor:
    """The error norm of the adaptive step control: the largest RMS of the map's parts (z, ladj).

    The regularisers' integrals are left out: they are penalties, not part of the map, and
    their errors (the Frobenius estimate's above all) would otherwise shrink the steps.
    """
    return torch.maximum(state[0].square().mean().sqrt(), state[1].square().mean().sqrt())


class _FirstDerivativesOnly(torch.autograd.Function):
    """The identity on the adjoint solve's outputs, whose backward refuses a graph.

    torchdiffeq's adjoint backward returns gradients without a graph, so second derivatives
    (``create_graph=True``: gradient penalties, Hessian-vector products) would silently come
    out as zeros; this node raises instead.
    """

    @staticmethod
    def forward(ctx, *tensors: Tensor) -> tuple[Tensor, ...]:
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError("ContinuousFlow(adjoint=True): second derivatives are not available through the adjoint "
                               "method; build the flow with adjoint=False for gradient penalties or Hessian products")
        return grads


def _tolerance(value: float, dtype: torch.dtype) -> float:
    # A tolerance below what the dtype resolves makes the step size underflow: 10 ulps at most.
    return max(value, 10 * torch.finfo(dtype).eps)


class _Dynamics:
    """The augmented dynamics of one solve: d/dt (z, ladj[, kinetic, jacobian]) =
    (f, tr df/dz[, ||f||^2, ||df/dz||_F^2]), with its own evaluation counters.

    Built afresh by every call of :class:`ContinuousFlow`, so that the context, the noise of
    the Hutchinson estimator and the counters belong to that call alone.
    """

    def __init__(self, owner: ContinuousFlow, context: Tensor | None, noise: Tensor | None, regularise: bool,
                 record: SolverRecord | None, adjoint: bool, direction: str):
        self.owner, self.context, self.noise = owner, context, noise
        self.regularise, self.record, self.adjoint, self.direction = regularise, record, adjoint, direction
        self.nfe_forward = self.nfe_backward = 0
        self.solving = True
        # the adjoint's backward solve runs after the call returns: it must differentiate the
        # tensors the forward solve used, which under torch.func.functional_call are not the
        # network's parameters any more by then
        self.parameters = dict(owner.net.named_parameters()) if adjoint else None

    def _count(self) -> None:
        if self.solving:
            self.nfe_forward += 1
            used = self.nfe_forward
        else:  # the adjoint's backward solve
            self.nfe_backward += 1
            used = self.nfe_backward
            if self.record is not None:
                self.record.nfe_backward += 1
        if used > self.owner.max_evaluations:
            phase = "" if self.solving else " backward (adjoint)"
            raise ConvergenceError(
                f"ContinuousFlow: the{phase} {self.direction} solve exceeded its budget of {self.owner.max_evaluations} "
                f"function evaluations (NFE {used}, {self.owner.method}, rtol={self.owner.rtol:g}, "
                f"atol={self.owner.atol:g}); raise max_evaluations or the tolerances, or regularise the dynamics")

    def _count_backward(self, grad: Tensor) -> None:
        self.nfe_backward += 1
        if self.record is not None:
            self.record.nfe_backward += 1

    def __call__(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self._count()
        z = state[0]
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            # a fresh leaf unless z is part of the graph being built (a view made under no_grad
            # may say requires_grad and still not be part of any graph)
            if not (differentiable and z.requires_grad):
                z = z.detach().requires_grad_()
            f = self.owner.velocity(z, t, self.context, self.parameters)
            trace, frobenius = _trace(f, z, self.noise, create_graph=differentiable, frobenius=self.regularise)
        if differentiable and not self.adjoint and f.requires_grad:
            f.register_hook(self._count_backward)
        if not differentiable:
            f, trace = f.detach(), trace.detach()
            frobenius = None if frobenius is None else frobenius.detach()
        if not self.regularise:
            return f, trace
        return f, trace, f.square().sum(-1), frobenius


def _trace(f: Tensor, z: Tensor, noise: Tensor | None, create_graph: bool,
           frobenius: bool) -> tuple[Tensor, Tensor | None]:
    r"""tr(df/dz) and, if asked, ||df/dz||_F^2, exactly (``noise`` None: the D rows of the
    Jacobian by D vector-Jacobian products) or by the Hutchinson estimates e^T (df/dz) e and
    ||e^T df/dz||^2 (one product), unbiased when E[e e^T] = I.

    Shapes: f, z, noise (*batch, D); returns (*batch,) each.
    """
    if noise is not None:
        row = torch.autograd.grad(f, z, noise, create_graph=create_graph, retain_graph=True)[0]
        return (row * noise).sum(-1), row.square().sum(-1) if frobenius else None
    trace = f.new_zeros(f.shape[:-1])
    norm = f.new_zeros(f.shape[:-1]) if frobenius else None
    for i in range(f.shape[-1]):
        # the examples are independent: the gradient of the sum over the batch is each one's row
        row = torch.autograd.grad(f[..., i].sum(), z, create_graph=create_graph, retain_graph=True)[0]
        trace = trace + row[..., i]
        if frobenius:
            norm = norm + row.square().sum(-1)
    return trace, norm


class ContinuousFlow(Transform):
    r"""Continuous normalizing flow block: the flow of the ODE dz/dt = f(z, t, c) from t = 0 to T.

    x = z(T), z(0) = z; ladj = int_0^T tr(df/dz)(z(t), t, c) dt (forward), the inverse
    integrates the same augmented ODE from T back to 0, which gives z and -int_0^T tr(df/dz) dt.
    f is an MLP of the concatenation [z, t, c] (t left out when ``time_dependent`` is False),
    every layer with PyTorch's default initialisation: the block starts near the identity, not at
    it (a last layer at zero slows training, see ``__init__``).

    The trace is exact (D vector-Jacobian products per evaluation of f, the default) or the
    Hutchinson estimate e^T (df/dz) e with e ~ N(0, I) or Rademacher noise, drawn once per
    call and fixed during its solve (and during the adjoint's backward solve); the log-density
    is then an unbiased estimate. The estimator is used in training mode only, unless
    ``evaluation_trace`` says otherwise: in evaluation mode the exact trace gives exact,
    deterministic log-likelihoods (at D vector-Jacobian products per evaluation).

    Regularisation (Finlay et al. 2020): with ``kinetic`` λ_K > 0 or ``jacobian`` λ_J > 0, a
    call inside :func:`recording` also integrates K = int ||f||^2 dt and
    B = int ||df/dz||_F^2 dt along its path (B exact with the exact trace, else the estimate
    ||e^T df/dz||^2 from the same product) and adds λ_K K + λ_J B to the record's
    ``penalty``. Every call inside :func:`recording` adds its number of function evaluations
    (NFE) to the record: that is how :func:`pushforward.fit` reports NFE and trains with the
    penalty; the transform itself keeps no state between calls.

    Tolerances below 10 ulps of the input's dtype are raised to that (1.2e-6 in float32), so
    that one module works in float64 and float32.

    Shapes: z, x (*batch, features); context (*batch, context_features); ladj (*batch,).

    Reference: Chen, Rubanova, Bettencourt & Duvenaud. Neural ordinary differential equations.
    NeurIPS 2018, theorem 1 (instantaneous change of variables), and section 3 (adjoint).
    arXiv:1806.07366. Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud. FFJORD: free-form
    continuous dynamics for scalable reversible generative models. ICLR 2019, section 3
    (Hutchinson's estimator, the noise fixed during each solve). arXiv:1810.01367. Finlay,
    Jacobsen, Nurbekyan & Oberman. How to train your neural ODE: the world of Jacobian and
    kinetic regularization. ICML 2020 (the kinetic energy, the Jacobian's Frobenius norm and
    its estimate by one vector-Jacobian product). arXiv:2002.02798.

    Args:
        features: dimension D.
        context_features: size of the context, 0 for none.
        hidden_features: hidden layer sizes of f.
        time_dependent: whether f takes t as an input.
        activation: f's non-linearity; it must be smooth (Tanh, Softplus, ...): the trace and
            its gradient differentiate f twice.
        time: the integration time T.
        trace: "exact" or "hutchinson", in training mode.
        noise: the Hutchinson noise, "gaussian" or "rademacher".
        evaluation_trace: the trace in evaluation mode, "exact" (default) or "hutchinson".
        method: a torchdiffeq solver: adaptive (dopri5, dopri8, bosh3, fehlberg2,
            adaptive_heun) or fixed-step (euler, midpoint, heun3, rk4, explicit_adams,
            implicit_adams; their inverse is exact only up to the discretisation error).
        rtol, atol: the adaptive solvers' relative and absolute tolerances.
        step_size: the fixed-step solvers' step (required by them, unused otherwise).
        adjoint: back-propagate by the adjoint method (``odeint_adjoint``: a backward solve,
            memory constant in the number of steps) instead of through the solver's operations.
        max_evaluations: the largest NFE of one solve (forward, or the adjoint's backward).
        kinetic, jacobian: the weights λ_K and λ_J of the regularisers.

    Raises:
        ValueError: for an unknown trace, noise or method, a fixed-step method without
            ``step_size``, or a number out of range (tolerances, time, step_size > 0;
            weights >= 0).
        ConvergenceError: (when called) if a solve needs more than ``max_evaluations``
            evaluations, or the solver fails (step size underflow, non-finite state); the
            message gives the NFE.
    """

    def __init__(self, features: int, context_features: int = 0, hidden_features: Sequence[int] = (64, 64),
                 time_dependent: bool = True, activation: type[nn.Module] = nn.Tanh, time: float = 1.0,
                 trace: str = "exact", noise: str = "gaussian", evaluation_trace: str = "exact",
                 method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, step_size: float | None = None,
                 adjoint: bool = False, max_evaluations: int = 10_000, kinetic: float = 0.0, jacobian: float = 0.0):
        super().__init__()
        check_arguments(features=features, context_features=context_features, hidden_features=hidden_features,
                        time=time, rtol=rtol, atol=atol, step_size=step_size, max_evaluations=max_evaluations,
                        kinetic=kinetic, jacobian=jacobian)
        for name, value, known in (("trace", trace, _TRACES), ("evaluation_trace", evaluation_trace, _TRACES),
                                   ("noise", noise, _NOISES), ("method", method, ADAPTIVE_METHODS + FIXED_STEP_METHODS)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; choose {', '.join(known)}")
        if method in FIXED_STEP_METHODS and step_size is None:
            raise ValueError(f"the fixed-step method {method} needs a step_size")
        self.features, self.context_features, self.time_dependent = features, context_features, time_dependent
        self.time, self.trace, self.noise, self.evaluation_trace = float(time), trace, noise, evaluation_trace
        self.method, self.rtol, self.atol, self.step_size = method, float(rtol), float(atol), step_size
        self.adjoint, self.max_evaluations = adjoint, max_evaluations
        self.kinetic, self.jacobian = float(kinetic), float(jacobian)
        self.net = MLP(features + int(time_dependent) + context_features, features, hidden_features, activation)
        # Unlike a coupling conditioner, f keeps PyTorch's default initialisation in its last layer
        # too: a flow that starts as the identity needs none, and with that layer at zero the other
        # layers' gradients (proportional to its weights) are zero at the first step and small for
        # many after; on digits (3 x 256 tanh units, Adam 1e-3, batch 128) the zero start reached a
        # validation log-likelihood of -137.6 nats after 55 steps, this one -133.0.
        self.net[-1].reset_parameters()

    def extra_repr(self) -> str:
        regularised = f", kinetic={self.kinetic:g}, jacobian={self.jacobian:g}" if self.kinetic or self.jacobian else ""
        return (f"features={self.features}, trace={self.trace}, method={self.method}, rtol={self.rtol:g}, "
                f"atol={self.atol:g}, time={self.time:g}{', adjoint' if self.adjoint else ''}{regularised}")

    def velocity(self, z: Tensor, t: Tensor | float, context: Tensor | None = None,
                 parameters: dict[str, Tensor] | None = None) -> Tensor:
        """f(z, t, c), the velocity of the ODE; with ``parameters`` (name -> tensor of the
        network ``net``) those tensors instead of the network's own.

        Shapes: z (*batch, features); t a scalar; context (*batch, context_features) or None;
        returns (*batch, features).
        """
        parts = [z]
        if self.time_dependent:
            parts.append(torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(*z.shape[:-1], 1))
        if self.context_features:
            parts.append(context.expand(*z.shape[:-1], -1))
        inputs = torch.cat(parts, -1) if len(parts) > 1 else z
        return self.net(inputs) if parameters is None else torch.func.functional_call(self.net, parameters, (inputs,))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(z, context, inverse=False)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(x, context, inverse=True)

    def _solve(self, u: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        if self.context_features:
            check_context(context, self.context_features, type(self).__name__)
        else:
            context = None
        record = _RECORD.get()
        regularise = record is not None and (self.kinetic > 0 or self.jacobian > 0)
        noise = None
        if (self.trace if self.training else self.evaluation_trace) == "hutchinson":
            noise = torch.randn_like(u) if self.noise == "gaussian" else torch.randint_like(u, 2) * 2 - 1
        direction = "inverse" if inverse else "forward"
        dynamics = _Dynamics(self, context, noise, regularise, record, self.adjoint, direction)
        times = torch.tensor([self.time, 0.0] if inverse else [0.0, self.time], dtype=u.dtype, device=u.device)
        zero = u.new_zeros(u.shape[:-1])
        state = (u, zero, zero, zero) if regularise else (u, zero)
        options = {"rtol": _tolerance(self.rtol, u.dtype), "atol": _tolerance(self.atol, u.dtype),
                   "method": self.method,
                   "options": {"step_size": self.step_size} if self.method in FIXED_STEP_METHODS else None}
        if regularise and self.method in ADAPTIVE_METHODS:
            options["options"] = {"norm": _map_norm}
        try:
            if self.adjoint:
                params = tuple(p for p in dynamics.parameters.values() if p.requires_grad)
                if context is not None and context.requires_grad:
                    params += (context,)
                path = _FirstDerivativesOnly.apply(*odeint_adjoint(dynamics, state, times, adjoint_params=params,
                                                                   **options))
            else:
                path = odeint(dynamics, state, times, **options)
        except AssertionError as error:  # torchdiffeq's checks: step size underflow, non-finite state
            raise ConvergenceError(f"ContinuousFlow: the {direction} solve failed after {dynamics.nfe_forward} function "
                                   f"evaluations ({self.method}): {str(error).splitlines()[0][:120]}") from None
        finally:
            dynamics.solving = False
        out, ladj = path[0][-1], path[1][-1]
        if record is not None:
            record.solves += 1
            record.nfe_forward += dynamics.nfe_forward
            if regularise:
                # integrated from T to 0, the inverse's integrals of positive quantities come out negative
                sign = -1.0 if inverse else 1.0
                kinetic, jacobian = sign * path[2][-1], sign * path[3][-1]
                record.kinetic.append(kinetic)
                record.jacobian.append(jacobian)
                record.penalty = record.penalty + self.kinetic * kinetic + self.jacobian * jacobian
        return out, ladj
