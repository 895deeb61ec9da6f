r"""Numerical inverses for transforms without a closed-form one, with a stated tolerance.

Each solver raises :class:`ConvergenceError` rather than returning an inaccurate result.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ConvergenceError", "default_tolerance", "bisection", "newton"]

_ARMIJO = 1e-4  # sufficient decrease of ||F||^2 asked of a damped Newton step


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
        ConvergenceError: if y is not finite or lies outside f([-max_bracket, max_bracket]), f is not finite
            there, or the bracket is still wider than the tolerance after ``max_iter`` halvings.
    """
    tol = default_tolerance(y.dtype) if tol is None else tol
    if not bool(torch.isfinite(y).all()):
        raise ConvergenceError("bisection: the target holds NaN or infinite values")
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


def _damped_step(residual: Callable[[Tensor], Tensor], x: Tensor, f: Tensor, step: Tensor, done: Tensor,
                 max_halvings: int) -> tuple[Tensor, Tensor]:
    """x - t * step with t = 1, 1/2, 1/4, ... the first to decrease ||F||^2 enough (Armijo), per problem.

    Returns the new x and, per problem, whether some t decreased ||F||^2 (or it was done).
    """
    norm = f.square().sum(-1)
    t = torch.ones_like(norm)
    for _ in range(max_halvings):
        trial = x - t.unsqueeze(-1) * step
        ok = done | (residual(trial).square().sum(-1) <= (1 - _ARMIJO * t) * norm)
        if bool(ok.all()):
            break
        t = torch.where(ok, t, t / 2)
    return trial, ok


def newton(residual: Callable[[Tensor], Tensor], solve: Callable[[Tensor, Tensor], Tensor], x0: Tensor,
           tol: float | None = None, max_iter: int = 100, max_halvings: int = 40) -> Tensor:
    r"""Solve F(x) = 0 for a batch of independent problems by damped Newton iterations.

    x <- x - t J(x)^{-1} F(x), with t the first of 1, 1/2, 1/4, ... that decreases ||F||^2 by a
    factor (1 - 1e-4 t) (Armijo backtracking, per problem). Where J is non-singular everywhere
    and ||F|| grows without bound at infinity (as for planar and Sylvester maps), this
    converges from any start (line-search Newton on the merit function ||F||^2 / 2; Nocedal &
    Wright, Numerical optimization, 2nd ed. 2006, chapter 11).
    A problem is solved once every component of its full Newton step is at most
    tol * max(1, |x|); the error of the result is then about the size of the next step, far
    below tol near a regular root (quadratic convergence). A problem whose ||F|| no step
    decreases any more while its Newton step is below sqrt(tol) * max(1, |x|) has reached
    the rounding floor of the dtype and is also taken as solved, as accurately as the dtype
    allows (this happens for badly conditioned J in float32).

    The iterations run without gradients; the result is two more Newton steps taken with
    autograd from the detached solution: the first one's derivatives with respect to anything F
    depends on are those of the implicit function theorem, -J^{-1} dF (exact at the root); the
    second, from a point with those derivatives, makes the second derivatives exact as well
    (the Newton map is flat at the root, so its error enters only squared).

    Shapes: x0 (*batch, n); residual maps (*batch, n) -> (*batch, n); solve(x, r) returns
    J(x)^{-1} r, shape (*batch, n); returns x (*batch, n).

    Args:
        residual: F, acting independently on each problem of the batch.
        solve: (x, r) -> J(x)^{-1} r, with J the Jacobian of F at x.
        x0: the starting point.
        tol: tolerance on the Newton step (default :func:`default_tolerance`).
        max_iter: the largest number of Newton iterations.
        max_halvings: the largest number of step halvings in one iteration.

    Raises:
        ConvergenceError: if a Newton step is not finite, or the tolerance is not met after
            ``max_iter`` iterations.
    """
    tol = default_tolerance(x0.dtype) if tol is None else tol
    with torch.no_grad():
        x = x0.detach()
        stalled = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        for _ in range(max_iter):
            f = residual(x)
            step = solve(x, f)
            if not bool(torch.isfinite(step).all()):
                raise ConvergenceError("newton: the Newton step is not finite")
            size = step.abs() / torch.clamp(x.abs(), min=1)
            done = (size <= tol).all(-1) | (stalled & (size <= math.sqrt(tol)).all(-1))
            if bool(done.all()):
                break
            x, decreased = _damped_step(residual, x, f, step, done, max_halvings)
            stalled = ~decreased
        else:
            raise ConvergenceError(f"newton did not reach tolerance {tol:g} in {max_iter} iterations")
    x = x - solve(x, residual(x))
    return x - solve(x, residual(x))
