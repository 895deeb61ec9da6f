r"""The core of pushforward: transforms, their composition, and flows.

A transform maps the base space to the data space (the generative direction), x = g(z), and
each of its two methods returns the result together with the log-abs-det-Jacobian (``ladj``)
of the map it just applied:

    x, ladj = t(z, context)          # forward: base -> data,  ladj = log|det dx/dz|
    z, ladj = t.inverse(x, context)  # inverse: data -> base,  ladj = log|det dz/dx|

A flow is the pushforward of a base distribution by a transform; its density follows from
the change of variables, log p(x) = log p_base(g^{-1}(x)) + log|det J_{g^{-1}}(x)|.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Transform", "Chain", "Inverse", "Flow", "check_finite", "check_event_shape", "sum_rightmost", "on_images",
           "replay_backward"]


def sum_rightmost(t: Tensor, n: int) -> Tensor:
    """Sum ``t`` over its ``n`` trailing dimensions: (*batch, *event) -> (*batch,)."""
    return t.flatten(t.dim() - n).sum(-1) if n > 0 else t


def on_images(op: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """``op``, a function of 4-D image batches (N, C, H, W) -> (N, C', H', W') such as a
    convolution, applied over any number of batch dimensions: (*batch, C, H, W) ->
    (*batch, C', H', W')."""
    out = op(u.reshape(-1, *u.shape[-3:]))
    return out.reshape(*u.shape[:-3], *out.shape[-3:])


def replay_backward(function: Callable[..., Tensor | tuple[Tensor, ...]], inputs: Sequence[Tensor | None],
                    needs_input_grad: Sequence[bool], grads: Sequence[Tensor]) -> tuple[Tensor | None, ...]:
    r"""The backward of a hand-written autograd node by plain autograd, for a higher-order graph.

    A node's hand-written backward computes first derivatives without a graph. Called from
    that backward when ``torch.is_grad_enabled()`` (the engine runs a backward with grad mode
    on exactly when ``create_graph=True`` asked for a differentiable gradient: double
    backward, gradient penalties, Hessian-vector products), it recomputes ``function`` from
    the saved ``inputs`` with composed differentiable operations and returns their gradients
    with a graph, so that second derivatives are exact instead of missing.

    Shapes: ``function(*inputs)`` returns the node's outputs (a tensor or a tuple), ``grads``
    one gradient per output; returns one gradient per input (None where not needed).
    """
    with torch.enable_grad():
        outputs = function(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        wanted = [t for t, need in zip(inputs, needs_input_grad) if need]
        found = iter(torch.autograd.grad(outputs, wanted, grads, create_graph=True, allow_unused=True))
    return tuple(next(found) if need else None for need in needs_input_grad[: len(inputs)])


def check_finite(x: Tensor, name: str = "input") -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values.

    Raises:
        ValueError: naming ``name`` and the number of non-finite entries.
    """
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")


def check_event_shape(x: Tensor, event_shape: Sequence[int], name: str = "input") -> None:
    """Raise ``ValueError`` unless the trailing dimensions of ``x`` equal ``event_shape``.

    Raises:
        ValueError: naming the expected and the received shape.
    """
    event_shape = tuple(event_shape)
    n = len(event_shape)
    if x.dim() < n or tuple(x.shape[x.dim() - n :]) != event_shape:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, expected (*batch, {', '.join(map(str, event_shape))})"
        )


class Transform(nn.Module):
    r"""Base class of every bijection x = g(z) of pushforward.

    Subclasses implement ``forward(z, context)`` (base -> data) and ``inverse(x, context)``
    (data -> base). Each returns ``(output, ladj)`` where ``ladj`` is the log-abs-det-Jacobian
    of the map just applied, in nats, summed over the event dimensions to the batch shape (the
    input shape less its event dimensions).

    A transform may change the event shape (a squeeze maps (C, H, W) to (4C, H/2, W/2)); it
    then overrides :meth:`forward_shape` and :meth:`inverse_shape`, and sets ``data_event_dims``
    when the number of event dimensions changes. The number of elements never changes.

    Attributes:
        event_dims: number of trailing dimensions the transform acts on, on the base side
            (1 for vectors ``(*batch, D)``, 3 for images ``(*batch, C, H, W)``).
        data_event_dims: the same on the data side (``event_dims`` unless the map changes it).

    Shapes: z (*batch, *event); x (*batch, *forward_shape(event)); context
    (*batch, context_features) or None; ladj (*batch,).
    """

    event_dims: int = 1

    @property
    def data_event_dims(self) -> int:
        """The number of event dimensions on the data side (``event_dims`` unless the transform
        changes the rank of its events)."""
        return self.event_dims

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The event shape of ``forward``'s output for an input event ``shape`` (base -> data).

        Raises:
            ValueError: if the transform cannot act on events of that shape.
        """
        return tuple(shape)

    def inverse_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The event shape of ``inverse``'s output for an input event ``shape`` (data -> base).

        Raises:
            ValueError: if the transform cannot act on events of that shape.
        """
        return tuple(shape)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not define inverse")


class Chain(Transform):
    r"""Composition of transforms; ``Chain(t1, t2)`` applies ``t1`` first in the forward direction.

    x = t_n(... t_1(z)), ladj = sum of the parts' ladj; the inverse applies the inverses in
    reverse order. Event shapes compose: ``forward_shape`` is that of the parts in turn.

    Shapes: z (*batch, *event) as ``t_1`` takes it; x as ``t_n`` makes it.

    Raises:
        ValueError: if a part's output has another number of event dimensions than the next
            part acts on.
    """

    def __init__(self, *transforms: Transform):
        super().__init__()
        for a, b in zip(transforms[:-1], transforms[1:]):
            if a.data_event_dims != b.event_dims:
                raise ValueError(f"Chain: {type(a).__name__} outputs {a.data_event_dims} event dimension(s), "
                                 f"{type(b).__name__} acts on {b.event_dims}")
        self.transforms = nn.ModuleList(transforms)
        self.event_dims = transforms[0].event_dims if transforms else 1
        self._data_event_dims = transforms[-1].data_event_dims if transforms else 1

    @property
    def data_event_dims(self) -> int:
        return self._data_event_dims

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        for t in self.transforms:
            shape = t.forward_shape(shape)
        return tuple(shape)

    def inverse_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        for t in reversed(self.transforms):
            shape = t.inverse_shape(shape)
        return tuple(shape)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = z.new_zeros(z.shape[: z.dim() - self.event_dims])
        for t in self.transforms:
            z, part = t(z, context)
            ladj = ladj + part
        return z, ladj

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = x.new_zeros(x.shape[: x.dim() - self.data_event_dims])
        for t in reversed(self.transforms):
            x, part = t.inverse(x, context)
            ladj = ladj + part
        return x, ladj

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, i: int) -> Transform:
        return self.transforms[i]


class Inverse(Transform):
    r"""The inverse g^{-1} of a transform g: its forward is ``t.inverse`` and vice versa.

    Used to swap which direction is cheap, e.g. IAF = Inverse of a masked autoregressive layer.

    Shapes: as ``t`` with the directions swapped.
    """

    def __init__(self, transform: Transform):
        super().__init__()
        self.transform = transform
        self.event_dims = transform.data_event_dims

    @property
    def data_event_dims(self) -> int:
        return self.transform.event_dims

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return self.transform.inverse_shape(shape)

    def inverse_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return self.transform.forward_shape(shape)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(z, context)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(x, context)


class Flow(nn.Module):
    r"""A normalizing flow: the pushforward of a base distribution by a transform.

    log p(x | c) = log p_base(z) + log|det dz/dx|, with z = transform.inverse(x, c).
    Samples are x = transform(z, c), z ~ base.

    With an ``embedding`` network e, the transforms read e(c) instead of c: the context may
    then have any shape that e takes (an image, a set, a sequence), e is trained jointly with
    the flow, and e(c) must end in ``context_features``.

    The batch shapes of data and (embedded) context broadcast: one context row (context_features,)
    or (1, context_features) serves every data row, as in :meth:`as_distribution`.

    Shapes: x (*batch, *event); context (*batch_c, context_features), or (*batch_c, *raw) when
    e maps it to (*batch_c, context_features), or None; *batch_c broadcasts with *batch;
    log_prob (broadcast batch,), in nats.

    Args:
        base: a base distribution module of :mod:`pushforward.distributions` (anything with
            ``event_shape``, ``log_prob(z)`` and ``rsample(shape)``).
        transform: the transform g from base to data space.
        embedding: an ``nn.Module`` applied to the context before the transforms read it, or
            None.

    Raises:
        ValueError: if base and transform disagree on the event dimensions, or an embedding is
            given to a flow that takes no context.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.MAF(2, transforms=2, hidden_features=(16,))
        >>> flow.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    def __init__(self, base: nn.Module, transform: Transform, embedding: nn.Module | None = None):
        super().__init__()
        base_dims = len(base.event_shape)
        if base_dims != transform.event_dims:
            raise ValueError(f"the base has {base_dims} event dimension(s), the transform acts on "
                             f"{transform.event_dims}")
        self.base = base
        self.transform = transform
        self._event_shape = torch.Size(transform.forward_shape(base.event_shape))
        # a flow is conditional when a part of it was built to read a context (its conditioner,
        # a MADE or context parameters, records how many features)
        self.context_features = max((getattr(m, "context_features", 0) or 0 for m in transform.modules()), default=0)
        if embedding is not None and not self.context_features:
            raise ValueError("an embedding network needs a conditional flow: give context_features > 0")
        self.embedding = embedding

    @property
    def event_shape(self) -> torch.Size:
        """The shape of one data example: the transform's image of the base's event shape."""
        return self._event_shape

    def _check_context(self, context: Tensor | None) -> None:
        if context is not None and not self.context_features:
            raise ValueError(f"this flow takes no context (none of its transforms was built with context_features > 0), "
                             f"got a context of shape {tuple(context.shape)}")

    def embed(self, context: Tensor | None) -> Tensor | None:
        """The context as the transforms read it: ``embedding(context)`` with an embedding
        network, else ``context``; shape (*batch_c, context_features).

        Raises:
            ValueError: for a context given to a flow that takes none, a context holding NaN/inf,
                one the embedding cannot take, or an embedded context that does not end in
                ``context_features``.
        """
        self._check_context(context)
        if context is None:
            return None
        check_finite(context, "context")
        if self.embedding is not None:
            try:
                embedded = self.embedding(context)
            except RuntimeError as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ValueError(f"the embedding network cannot take a context of shape "
                                 f"{tuple(context.shape)}: {first}") from None
            if embedded.dim() == 0 or embedded.shape[-1] != self.context_features:
                raise ValueError(f"the embedding maps a context of shape {tuple(context.shape)} to "
                                 f"{tuple(embedded.shape)}, the flow reads (*batch, {self.context_features}) "
                                 f"(its context_features)")
            return embedded
        if context.dim() == 0 or context.shape[-1] != self.context_features:
            raise ValueError(f"context has shape {tuple(context.shape)}, expected "
                             f"(*batch, {self.context_features}) (the flow's context_features)")
        return context

    def _check(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Checked data and embedded context, both expanded to their common batch shape."""
        check_event_shape(x, self.event_shape, "data")
        x = _as_dtype(x, self.base, "data")
        check_finite(x, "data")
        context = self.embed(context)
        if context is None:
            return x, None
        batch = x.shape[: x.dim() - len(self.event_shape)]
        try:
            common = torch.broadcast_shapes(batch, context.shape[:-1])
        except RuntimeError:
            raise ValueError(f"context has batch shape {tuple(context.shape[:-1])}, data has {tuple(batch)}: "
                             f"they do not broadcast") from None
        return _broadcast(x, common + self.event_shape), _broadcast(context, common + context.shape[-1:])

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``x`` in nats, shape (*batch,), the batch shape of ``x`` broadcast
        with that of the (embedded) context.

        Integer data are cast to the flow's floating-point type.

        Raises:
            ValueError: if ``x`` has the wrong trailing shape, holds NaN/inf, has a floating-point
                type other than the flow's, or lies outside the support of a transform with a
                bounded domain; if ``context`` does not match (see :meth:`embed`), its batch
                shape does not broadcast with the data's, or it is given to a flow that takes
                none.
        """
        x, context = self._check(x, context)
        z, ladj = self.transform.inverse(x, context)
        return self.base.log_prob(z) + ladj

    def _base_sample(self, shape: Sequence[int], context: Tensor | None, grad: bool, temperature: float):
        context = self.embed(context)
        shape = tuple(shape)
        if context is not None:
            shape = shape + tuple(context.shape[:-1])
            context = context.expand(shape + context.shape[-1:])
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be positive and finite, got {temperature}")
        z = self.base.rsample(shape, temperature) if grad else self.base.sample(shape, temperature)
        return z, context

    def rsample_and_log_prob(
        self, shape: Sequence[int] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparametrised samples and their log-density in one forward pass.

        Shapes: x (*shape, *context_batch, *event); log_prob (*shape, *context_batch).
        """
        z, context = self._base_sample(shape, context, grad=True, temperature=1.0)
        x, ladj = self.transform(z, context)
        return x, self.base.log_prob(z) - ladj

    def sample_and_log_prob(
        self, shape: Sequence[int] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-density (nats) without gradients, one forward pass."""
        with torch.no_grad():
            return self.rsample_and_log_prob(shape, context)

    def rsample(self, shape: Sequence[int] = (), context: Tensor | None = None,
                temperature: float = 1.0) -> Tensor:
        """Reparametrised samples x = g(z), shape (*shape, *context_batch, *event).

        ``temperature`` T scales the base's standard deviation, z = mean + T (z' - mean) with z'
        a base sample (Kingma & Dhariwal 2018, section 5: T < 1 gives typical, smoother samples).

        Raises:
            ValueError: for a temperature that is not positive and finite.
        """
        z, context = self._base_sample(shape, context, grad=True, temperature=temperature)
        return self.transform(z, context)[0]

    def sample(self, shape: Sequence[int] = (), context: Tensor | None = None,
               temperature: float = 1.0) -> Tensor:
        """Samples without gradients, shape (*shape, *context_batch, *event); ``temperature``
        as in :meth:`rsample`."""
        with torch.no_grad():
            return self.rsample(shape, context, temperature)

    def encode(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The latent code z = g^{-1}(x) of data ``x``, shape (*batch, *base event shape): for a
        multi-scale image flow one tensor of the image's shape that holds the factored-out part of
        every level too (:mod:`pushforward.latent` says where).

        Raises:
            ValueError: as :meth:`log_prob`.
        """
        x, context = self._check(x, context)
        return self.transform.inverse(x, context)[0]

    def decode(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """The data x = g(z) of latent codes ``z`` (*batch, *base event shape): ``decode(encode(x))``
        is ``x`` up to rounding.

        Raises:
            ValueError: if ``z`` does not have the base's event shape.
        """
        check_event_shape(z, self.base.event_shape, "latent")
        return self.transform(z, self.embed(context))[0]

    def as_distribution(self, context: Tensor | None = None) -> torch.distributions.Distribution:
        """A :class:`torch.distributions.Distribution` view of the flow (given ``context``)."""
        return FlowDistribution(self, context)


def _broadcast(t: Tensor, shape: torch.Size) -> Tensor:
    """``t`` broadcast to ``shape``, contiguous (transforms may ``view`` their inputs)."""
    return t if t.shape == shape else t.expand(shape).contiguous()


def _as_dtype(x: Tensor, base: nn.Module, name: str) -> Tensor:
    """``x`` cast to the floating-point type of ``base`` if it holds integers or booleans.

    Raises:
        ValueError: if ``x`` is floating-point of another type (casting would silently lose
            precision or memory; the message says what to call).
    """
    dtype = next(iter(base.buffers()), None)
    dtype = dtype.dtype if dtype is not None else next(base.parameters()).dtype
    if not x.is_floating_point():
        return x.to(dtype)
    if x.dtype != dtype:
        raise ValueError(f"{name} is {x.dtype}, the flow computes in {dtype}: convert one to the other "
                         f"(x.to({dtype}) or flow.to({x.dtype}))")
    return x


class FlowDistribution(torch.distributions.Distribution):
    """:class:`torch.distributions.Distribution` view of a :class:`Flow` at a fixed context.

    Its batch shape is the (embedded) context's batch shape (empty without context) and its
    event shape the flow's; ``log_prob`` is in nats.
    """

    has_rsample = True
    arg_constraints: dict = {}

    def __init__(self, flow: Flow, context: Tensor | None = None):
        self.flow = flow
        self.context = context
        with torch.no_grad():
            embedded = flow.embed(context)
        batch = embedded.shape[:-1] if embedded is not None else torch.Size()
        super().__init__(batch, flow.event_shape, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.flow.log_prob(value, self.context)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        return self.flow.rsample(sample_shape, self.context)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        return self.flow.sample(sample_shape, self.context)

