r"""Unnormalized target densities for variational inference, log p~(z) in nats.

A :class:`Target` is known up to its normalising constant Z = integral of p~: variational
inference (:mod:`pushforward.vi`) fits a flow q to it and estimates log Z. The built-in
targets (:data:`TARGETS`, :func:`get_target`):

- ``u1`` ... ``u4``: the 2-D energy functions of Rezende & Mohamed 2015 (table 1),
  log p~(z) = -U(z). U1 is a proper density on R^2. U2, U3 and U4 are not integrable on R^2
  (they are constant in distribution along z1), so here they are restricted to the box
  [-4, 4]^2 of the paper's figures by a soft wall: log p~(z) = -U(z) - sum_i
  relu(|z_i| - 4)^2 / (2 * 0.1^2). The wall keeps the density positive and its gradient
  finite everywhere, so any flow on R^2 can be fitted (a hard -inf outside the box would give
  -inf ELBOs and NaN gradients for the samples that leave it), and it makes p~ integrable;
  its mass outside the box is a thin Gaussian fringe. The reference ``log_z`` is that of the
  walled density, by the midpoint rule on a 4000 x 4000 grid over [-5, 5]^2 (float64; a 1000 x 1000
  grid gives the same figures to 1e-8): U1 1.8775016, U2 2.1129413, U3 2.6725571, U4 2.7246945
  (without the fringe, over the box alone: U2 2.0821, U3 2.6417, U4 2.6846).
- ``banana``: a Rosenbrock-type "twisted Gaussian", exact log Z.
- ``funnel``: Neal's funnel in any dimension, exact log Z.
- ``mixture``: a mixture of isotropic Gaussians with unnormalized weights, exact log Z.
- a user function, ``"module:function"`` or ``"path/to/file.py:function"`` (:func:`load_target`).

Shapes: every ``log_prob`` maps z (*batch, dim) to (*batch,), in the dtype and on the device
of z.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Target", "TARGETS", "get_target", "load_target", "energy", "banana", "funnel", "gaussian_mixture",
           "mixture", "grid_log_z", "BOX_WALL", "TargetError", "describe_error"]

BOX_WALL = 0.1  # width of the soft wall that restricts U2-U4 to [-4, 4]^2
_BOX = ((-4.0, 4.0), (-4.0, 4.0))
_LOG_2PI = math.log(2 * math.pi)


class TargetError(ValueError):
    """A user target that cannot be imported or that raises: the message gives the user's own
    error with its file and line."""


def describe_error(error: BaseException) -> str:
    """One line for an exception raised by user code: "TYPE: message (file, line N)", the place
    being the syntax error's, or the innermost frame outside torch."""
    message = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, SyntaxError):
        message = error.msg
        where = (error.filename, error.lineno)
    else:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
        where = (frames[-1].filename, frames[-1].lineno) if frames else None
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text if where is None else f"{text} ({where[0]}, line {where[1]})"


_TORCH_DIR = str(Path(torch.__file__).parent)


@dataclass(frozen=True)
class Target:
    r"""An unnormalized log-density log p~(z) on R^dim, in nats.

    Shapes: z (*batch, dim); ``log_prob(z)`` (*batch,).

    Args:
        name: what it is called (in run folders and plots).
        dim: the dimension of z.
        function: z -> log p~(z).
        log_z: the reference log Z = log of the integral of p~, when it is known (exactly, or
            on a grid: see ``note``).
        box: a plotting box ((lo_1, hi_1), ..., (lo_dim, hi_dim)), for 2-D targets.
        note: how ``log_z`` was obtained, or anything else a reader should know.

    Raises:
        ValueError: in ``log_prob``, if z does not end with ``dim`` or the function returns
            a tensor of another shape than z's batch shape.
        TargetError: in ``log_prob``, if the function raises (the message gives its error,
            file and line).
    """

    name: str
    dim: int
    function: Callable[[Tensor], Tensor] = field(repr=False)
    log_z: float | None = None
    box: tuple[tuple[float, float], ...] | None = None
    note: str = ""

    def log_prob(self, z: Tensor) -> Tensor:
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"target {self.name!r} is {self.dim}-dimensional, got z of shape {tuple(z.shape)}")
        try:
            out = self.function(z)
        except Exception as error:
            raise TargetError(f"target {self.name!r} failed: {describe_error(error)}") from None
        if not isinstance(out, Tensor) or out.shape != z.shape[:-1]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"target {self.name!r} returned {shape}, expected a tensor of shape {tuple(z.shape[:-1])}")
        return out

    __call__ = log_prob


# --- Rezende & Mohamed's energy functions ---------------------------------------------------

def _w1(z1: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z1 / 4)


def _two_wells(a: Tensor, b: Tensor) -> Tensor:
    """log(exp(-a^2 / 2) + exp(-b^2 / 2)), stably."""
    return torch.logaddexp(-0.5 * a.square(), -0.5 * b.square())


def _u1(z: Tensor) -> Tensor:
    z1 = z[..., 0]
    ring = 0.5 * ((torch.linalg.vector_norm(z, dim=-1) - 2) / 0.4).square()
    return ring - _two_wells((z1 - 2) / 0.6, (z1 + 2) / 0.6)


def _u2(z: Tensor) -> Tensor:
    return 0.5 * ((z[..., 1] - _w1(z[..., 0])) / 0.4).square()


def _u3(z: Tensor) -> Tensor:
    z1, z2 = z[..., 0], z[..., 1]
    w2 = 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6).square())
    return -_two_wells((z2 - _w1(z1)) / 0.35, (z2 - _w1(z1) + w2) / 0.35)


def _u4(z: Tensor) -> Tensor:
    z1, z2 = z[..., 0], z[..., 1]
    w3 = 3 * torch.sigmoid((z1 - 1) / 0.3)
    return -_two_wells((z2 - _w1(z1)) / 0.4, (z2 - _w1(z1) + w3) / 0.35)


def _wall(z: Tensor, half_width: float = 4.0) -> Tensor:
    """sum_i relu(|z_i| - half_width)^2 / (2 BOX_WALL^2): zero inside the box, a Gaussian fall-off outside."""
    return (F.relu(z.abs() - half_width).square() / (2 * BOX_WALL**2)).sum(-1)


_ENERGIES = {"u1": _u1, "u2": _u2, "u3": _u3, "u4": _u4}
# log Z by the midpoint rule on 4000 x 4000 cells over [-5, 5]^2 in float64 (U2-U4 with the wall).
_ENERGY_LOG_Z = {"u1": 1.8775016, "u2": 2.1129413, "u3": 2.6725571, "u4": 2.7246945}


def energy(name: str) -> Target:
    r"""One of the 2-D energy functions U1-U4 of Rezende & Mohamed as a target, log p~ = -U.

    With w1 = sin(2 pi z1 / 4), w2 = 3 exp(-((z1 - 1) / 0.6)^2 / 2), w3 = 3 sigmoid((z1 - 1) / 0.3):
    U1 = ((||z|| - 2) / 0.4)^2 / 2 - log(exp(-((z1 - 2) / 0.6)^2 / 2) + exp(-((z1 + 2) / 0.6)^2 / 2));
    U2 = ((z2 - w1) / 0.4)^2 / 2;
    U3 = -log(exp(-((z2 - w1) / 0.35)^2 / 2) + exp(-((z2 - w1 + w2) / 0.35)^2 / 2));
    U4 = -log(exp(-((z2 - w1) / 0.4)^2 / 2) + exp(-((z2 - w1 + w3) / 0.35)^2 / 2)).
    U2-U4 get the soft wall of the module docstring (restriction to [-4, 4]^2); U1 does not.

    Shapes: z (*batch, 2); log_prob (*batch,).

    Reference: Rezende & Mohamed. Variational inference with normalizing flows. ICML 2015,
    table 1 and figure 3.

    Raises:
        ValueError: for a name other than u1, u2, u3, u4.
    """
    if name not in _ENERGIES:
        raise ValueError(f"unknown energy {name!r}; choose u1, u2, u3 or u4")
    u = _ENERGIES[name]
    if name == "u1":
        def function(z: Tensor) -> Tensor:
            return -u(z)
        note = "proper on R^2; log Z on a 4000^2 grid over [-5, 5]^2"
    else:
        def function(z: Tensor) -> Tensor:
            return -u(z) - _wall(z)
        note = (f"restricted to [-4, 4]^2 by a soft wall of width {BOX_WALL} (not integrable on R^2); "
                "log Z of the walled density on a 4000^2 grid over [-5, 5]^2")
    return Target(name, 2, function, _ENERGY_LOG_Z[name], _BOX, note)


# --- targets with an exact normalising constant ----------------------------------------------

def banana(scale: float = 1.0, curvature: float = 1.0, width: float = 1.0) -> Target:
    r"""Rosenbrock-type banana (a "twisted Gaussian"), with its exact log Z.

    log p~(z) = -z1^2 / (2 s^2) - (z2 - c (z1^2 - s^2))^2 / (2 w^2), so z1 ~ N(0, s^2) and
    z2 | z1 ~ N(c (z1^2 - s^2), w^2): Z = 2 pi s w. (Goodman & Weare's Rosenbrock density
    exp(-(100 (z2 - z1^2)^2 + (1 - z1)^2) / 20) is this shape with z1 shifted by 1,
    s = sqrt(10), c = 1, w = sqrt(0.1).)

    Shapes: z (*batch, 2); log_prob (*batch,).

    Reference: Haario, Saksman & Tamminen. Adaptive proposal distribution for random walk
    Metropolis algorithm. Computational Statistics 1999 (the twisted Gaussian); Goodman &
    Weare. Ensemble samplers with affine invariance. CAMCoS 2010 (the Rosenbrock density).

    Args:
        scale: s, the standard deviation of z1.
        curvature: c, how much z2 bends with z1.
        width: w, the standard deviation of z2 around the curve.

    Raises:
        ValueError: unless scale and width are positive.
    """
    if scale <= 0 or width <= 0:
        raise ValueError(f"banana needs positive scale and width, got {scale}, {width}")

    def function(z: Tensor) -> Tensor:
        z1, z2 = z[..., 0], z[..., 1]
        return -0.5 * (z1 / scale).square() - 0.5 * ((z2 - curvature * (z1.square() - scale**2)) / width).square()

    reach = 3.2 * scale
    low, high = sorted((curvature * (-scale**2) - 3 * width, curvature * (reach**2 - scale**2) + 3 * width))
    box = ((-reach, reach), (min(low, -3 * width), high))
    return Target("banana", 2, function, math.log(2 * math.pi * scale * width), box, "exact: log(2 pi s w)")


def funnel(dim: int = 2, scale: float = 3.0) -> Target:
    r"""Neal's funnel: v ~ N(0, scale^2) and x_i | v ~ N(0, exp(v)), with its exact log Z.

    z = (v, x_1, ..., x_{dim-1}); log p~(z) = -v^2 / (2 scale^2) - (dim - 1) v / 2
    - exp(-v) sum_i x_i^2 / 2, the density less its constants, so
    log Z = log(2 pi scale^2) / 2 + (dim - 1) log(2 pi) / 2. The neck (v << 0) is where
    reverse-KL fits fall short.

    Shapes: z (*batch, dim); log_prob (*batch,).

    Reference: Neal. Slice sampling. Annals of Statistics 2003, section 8.

    Args:
        dim: total dimension (at least 2).
        scale: the standard deviation of v (Neal: 3).

    Raises:
        ValueError: for dim < 2 or scale <= 0.
    """
    if dim < 2 or scale <= 0:
        raise ValueError(f"funnel needs dim >= 2 and scale > 0, got dim={dim}, scale={scale}")

    def function(z: Tensor) -> Tensor:
        v, x = z[..., 0], z[..., 1:]
        return -0.5 * (v / scale).square() - 0.5 * (dim - 1) * v - 0.5 * torch.exp(-v) * x.square().sum(-1)

    log_z = 0.5 * math.log(2 * math.pi * scale**2) + 0.5 * (dim - 1) * _LOG_2PI
    box = ((-2 * scale, 2 * scale), (-10.0, 10.0)) if dim == 2 else None
    return Target(f"funnel-{dim}d" if dim != 2 else "funnel", dim, function, log_z, box, "exact")


def gaussian_mixture(means: Tensor | Sequence[Sequence[float]], scales: Tensor | Sequence[float],
                     weights: Tensor | Sequence[float] | None = None, name: str = "mixture") -> Target:
    r"""A mixture of isotropic Gaussians with unnormalized weights, with its exact log Z.

    log p~(z) = log sum_k w_k N(z; mu_k, sigma_k^2 I), so log Z = log sum_k w_k.

    Shapes: means (K, dim); scales (K,); weights (K,) positive (default ones); z (*batch, dim).

    Raises:
        ValueError: for inconsistent shapes, or non-positive scales or weights.
    """
    means = torch.as_tensor(means, dtype=torch.float64)
    scales = torch.as_tensor(scales, dtype=torch.float64).reshape(-1)
    weights = torch.ones(len(means)) if weights is None else torch.as_tensor(weights)
    weights = weights.to(torch.float64)
    if means.dim() != 2 or scales.shape != (len(means),) or weights.shape != (len(means),):
        raise ValueError(f"mixture: means (K, dim), scales (K,), weights (K,) expected, got "
                         f"{tuple(means.shape)}, {tuple(scales.shape)}, {tuple(weights.shape)}")
    if bool((scales <= 0).any() or (weights <= 0).any()):
        raise ValueError("mixture: scales and weights must be positive")
    dim = means.shape[1]
    log_norm = torch.log(weights) - dim * torch.log(scales) - 0.5 * dim * _LOG_2PI

    def function(z: Tensor) -> Tensor:
        mu, sigma, c = (t.to(z) for t in (means, scales, log_norm))
        squares = ((z.unsqueeze(-2) - mu) / sigma.unsqueeze(-1)).square().sum(-1)
        return torch.logsumexp(c - 0.5 * squares, dim=-1)

    reach = float((means.abs() + 3.5 * scales.unsqueeze(-1)).max())
    box = ((-reach, reach), (-reach, reach)) if dim == 2 else None
    return Target(name, dim, function, float(torch.logsumexp(torch.log(weights), 0)), box, "exact: log sum_k w_k")


def mixture(components: int = 6, radius: float = 3.0, scale: float = 0.5) -> Target:
    r"""The built-in 2-D mixture: ``components`` Gaussians of standard deviation ``scale`` at
    equal angles on a circle of radius ``radius``, weights 1, 2, ..., K (so log Z = log(K (K + 1) / 2)).

    Unequal weights make the modes distinguishable; a reverse-KL fit typically covers few of
    them (mode seeking), and the importance-sampling estimate of log Z then falls short with
    a small effective sample size.
    """
    angles = 2 * math.pi * torch.arange(components, dtype=torch.float64) / components
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    return gaussian_mixture(means, torch.full((components,), scale), torch.arange(1.0, components + 1))


TARGETS: dict[str, Callable[..., Target]] = {
    "u1": lambda: energy("u1"), "u2": lambda: energy("u2"), "u3": lambda: energy("u3"), "u4": lambda: energy("u4"),
    "banana": banana, "funnel": funnel, "mixture": mixture,
}


def load_target(spec: str, dim: int | None = None) -> Target:
    r"""A user target from ``"module:function"`` or ``"path/to/file.py:function"``.

    The object found is either a :class:`Target`, or a callable z (*batch, dim) ->
    log p~(z) (*batch,). The dimension is ``dim``, else the callable's attribute ``dim``; the
    attributes ``log_z`` (float) and ``box`` (plotting box) are used when present.

    Raises:
        ValueError: for a spec without ":", an object that is not callable, a missing or
            contradictory dimension.
        ImportError: if the module or file cannot be found, or lacks the function.
        TargetError: if importing the module or file raises (a syntax error, an exception):
            the message gives the user's error, file and line.
        FileNotFoundError: for a .py path that does not exist.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"a user target is 'module:function' or 'path/to/file.py:function', got {spec!r}")
    module = _import(module_name)
    if not hasattr(module, attr):
        raise ImportError(f"{module_name} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if isinstance(obj, Target):
        if dim is not None and dim != obj.dim:
            raise ValueError(f"target {spec!r} is {obj.dim}-dimensional, but dim={dim} was given")
        return obj
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    dim = dim if dim is not None else getattr(obj, "dim", None)
    if dim is None:
        raise ValueError(f"the dimension of {spec!r} is unknown: give dim (--dim) or set {attr}.dim")
    box = getattr(obj, "box", None)
    log_z = getattr(obj, "log_z", None)
    return Target(spec, int(dim), obj, None if log_z is None else float(log_z),
                  None if box is None else tuple(tuple(map(float, b)) for b in box), "user function")


def _import(name: str):
    if name.endswith(".py"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
        module_name = f"_pushforward_target_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise TargetError(f"cannot load the target file {path}: {describe_error(error)}") from None
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise ImportError(f"cannot import {name!r} ({e})") from None
    except Exception as error:
        raise TargetError(f"cannot load the target module {name!r}: {describe_error(error)}") from None


def get_target(spec: str, dim: int | None = None) -> Target:
    r"""A built-in target by name (:data:`TARGETS`), or a user one by ``module:function``.

    Args:
        spec: "u1", "u2", "u3", "u4", "banana", "funnel", "mixture", or "module:function" /
            "path/to/file.py:function".
        dim: the dimension, for ``funnel`` and user functions; for the 2-D targets it must be
            None or 2.

    Raises:
        ValueError: for an unknown name, or a ``dim`` the target does not have.
        ImportError, FileNotFoundError: as :func:`load_target`.
    """
    if ":" in spec and spec.lower() not in TARGETS:
        return load_target(spec, dim)
    key = spec.lower()
    if key not in TARGETS:
        raise ValueError(f"unknown target {spec!r} (known: {', '.join(TARGETS)}, or module:function)")
    if key == "funnel":
        return funnel(2 if dim is None else dim)
    target = TARGETS[key]()
    if dim is not None and dim != target.dim:
        raise ValueError(f"target {key!r} is {target.dim}-dimensional, not {dim}")
    return target


def grid_log_z(log_prob: Callable[[Tensor], Tensor], box: Sequence[tuple[float, float]], resolution: int = 1000,
               chunk: int = 1_000_000) -> float:
    r"""log of the integral of exp(log_prob) over a 2-D box by the midpoint rule, in float64.

    The grid has resolution x resolution cells; the midpoint rule converges fast for smooth
    densities that are negligible at the box's edges.

    Shapes: log_prob maps (N, 2) float64 to (N,).
    """
    (x0, x1), (y0, y1) = box
    hx, hy = (x1 - x0) / resolution, (y1 - y0) / resolution
    xs = x0 + hx * (torch.arange(resolution, dtype=torch.float64) + 0.5)
    ys = y0 + hy * (torch.arange(resolution, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        values = torch.cat([log_prob(grid[i : i + chunk]) for i in range(0, len(grid), chunk)])
    return float(torch.logsumexp(values, 0)) + math.log(hx * hy)
