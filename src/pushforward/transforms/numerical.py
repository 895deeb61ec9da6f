r"""Numerical inverses for transforms without a closed-form one, with a stated tolerance.

Each solver raises :class:`ConvergenceError` rather than returning an inaccurate result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ConvergenceError", "default_tolerance", "bisection"]


class ConvergenceError(RuntimeError):
    """A numerical inverse did not reach its tolerance within its iteration budget."""


def default_tolerance(dtype: torch.dtype) -> float:
    """The absolute tolerance (relative above 1) on the solution: 1e-10 in float64, 1e-5 below."""
    return 1e-10 if dtype == torch.float64 else 1e-5


def bisection(f: Callable[[Tensor], Tensor], y: Tensor, tol: float | None = None, max_iter: int = 200,
              max_bracket: float = 1e8) -> Tensor:
    r"""Solve f(x) = y element-wise for an increasing element-wise function f.

    The bracket [-1, 1] doubles until f(lower) <= y <= f(upper), then halves until its width
    is at most tol * max(1, |x|). Runs without gradients; the result is detached (evaluate the
    forward map at it to obtain values and ladj with gradients).

    Shapes: y (*shape); f maps (*shape) -> (*shape); returns x (*shape).

    Args:
        f: increasing in each element, acting element-wise.
        y: the targets.
        tol: tolerance on x (default :func:`default_tolerance`).
        max_iter: the largest number of halvings.
        max_bracket: the largest |x| looked at.

    Raises:
        ConvergenceError: if y lies outside f([-max_bracket, max_bracket]), f is not finite
            there, or the bracket is still wider than the tolerance after ``max_iter`` halvings.
    """
    tol = default_tolerance(y.dtype) if tol is None else tol
    with torch.no_grad():
        lower, upper = -torch.ones_like(y), torch.ones_like(y)
        while True:
            f_lower, f_upper = f(lower), f(upper)
            if not bool(torch.isfinite(f_lower).all() and torch.isfinite(f_upper).all()):
                raise ConvergenceError("bisection: the function is not finite on the bracket")
            low_bad, up_bad = f_lower > y, f_upper < y
            if not bool(low_bad.any() or up_bad.any()):
                break
            if float(torch.maximum(upper.abs().max(), lower.abs().max())) > max_bracket:
                raise ConvergenceError(f"bisection: target outside the image of [-{max_bracket:g}, {max_bracket:g}]")
            lower = torch.where(low_bad, 2 * lower, lower)
            upper = torch.where(up_bad, 2 * upper, upper)
        for _ in range(max_iter):
            middle = (lower + upper) / 2
            below = f(middle) < y
            lower, upper = torch.where(below, middle, lower), torch.where(below, upper, middle)
            if bool(((upper - lower) <= tol * torch.clamp(middle.abs(), min=1)).all()):
                return (lower + upper) / 2
        raise ConvergenceError(f"bisection did not reach tolerance {tol:g} in {max_iter} halvings")
