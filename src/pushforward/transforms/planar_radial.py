r"""Planar and radial flows: a single-unit residual map and a radial contraction/expansion.

Both have an O(D) log-abs-det-Jacobian and no closed-form inverse in general. Each inverse
reduces to a scalar equation: planar's is solved by damped Newton iterations to a stated
tolerance; radial's is a quadratic, solved in closed form. Their parameters are free or an
affine function of a context (amortised by an encoder, as in the paper's VAEs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import Transform
from ..nn.parameters import ContextParameters, read_renamed
from .numerical import newton

__all__ = ["Planar", "Radial"]


class Planar(Transform):
    r"""Planar flow x = z + u_hat tanh(w^T z + b), invertible by construction.

    u_hat = u + (m(w^T u) - w^T u) w / ||w||^2 with m(s) = -1 + softplus(s), so that
    w^T u_hat = m(w^T u) > -1 and x is a bijection (appendix A);
    ladj = log(1 + w^T u_hat tanh'(w^T z + b)), O(D).

    The inverse solves the scalar equation a + w^T u_hat tanh(a) = w^T x + b for
    a = w^T z + b (increasing in a) by damped Newton iterations (:func:`~.numerical.newton`),
    until the Newton step on a is at most tol * max(1, |a|); then z = x - u_hat tanh(a), whose
    error is at most ||u_hat|| times that of a. The inverse is differentiable (implicit
    function theorem).

    Parameters u, w (D,) and b () are free, or an affine function of a context. At
    initialisation u_hat = 0 (the identity), w ~ N(0, I / D).

    Shapes: z, x (*batch, features); context (*batch, context_features); ladj (*batch,).

    Reference: Rezende & Mohamed. Variational inference with normalizing flows. ICML 2015,
    eq. (10)-(12) and appendix A.1.

    Args:
        features: number of features D.
        context_features: size of the context, 0 for free parameters.
        tol: tolerance of the inverse (default 1e-10 in float64, 1e-5 below).
        max_iter: the largest number of Newton iterations of the inverse.

    Raises:
        ConvergenceError: in ``inverse``, if the tolerance is not met in ``max_iter`` iterations.
    """

    def __init__(self, features: int, context_features: int = 0, tol: float | None = None, max_iter: int = 100):
        super().__init__()
        w = torch.randn(features) / math.sqrt(features)
        u = math.log(math.e - 1) * w / w.square().sum()  # m(w^T u) = 0, so u_hat = 0
        self.conditioner = ContextParameters({"u": u, "w": w, "b": ()}, context_features)
        read_renamed(self, "params", "conditioner")  # checkpoints of pushforward 0.1
        self.tol, self.max_iter = tol, max_iter

    def parameters_hat(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(u_hat, w, b), with w^T u_hat > -1; shapes (*batch, D), (*batch, D), (*batch,)."""
        p = self.conditioner(context)
        u, w = p["u"], p["w"]
        eps = torch.finfo(w.dtype).eps
        wu = (w * u).sum(-1, keepdim=True)
        m = F.softplus(wu).clamp(min=eps) - 1  # > -1 even where softplus underflows to 0
        norm = w.square().sum(-1, keepdim=True).clamp(min=eps)  # guard against w = 0
        return u + (m - wu) / norm * w, w, p["b"]

    @staticmethod
    def _slope(u: Tensor, w: Tensor) -> Tensor:
        """w^T u_hat, kept above -1 against rounding."""
        return (w * u).sum(-1).clamp(min=torch.finfo(w.dtype).eps - 1)

    @staticmethod
    def _ladj(slope: Tensor, a: Tensor) -> Tensor:
        return torch.log1p(slope * (1 - torch.tanh(a).square()))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u, w, b = self.parameters_hat(context)
        a = (w * z).sum(-1) + b
        return z + u * torch.tanh(a).unsqueeze(-1), self._ladj(self._slope(u, w), a)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u, w, b = self.parameters_hat(context)
        slope = self._slope(u, w).unsqueeze(-1)
        target = ((w * x).sum(-1) + b).unsqueeze(-1)

        def residual(a: Tensor) -> Tensor:
            return a + slope * torch.tanh(a) - target

        def solve(a: Tensor, r: Tensor) -> Tensor:
            return r / (1 + slope * (1 - torch.tanh(a).square()))

        a = newton(residual, solve, target, self.tol, self.max_iter)
        return x - u * torch.tanh(a), -self._ladj(slope, a).squeeze(-1)


class Radial(Transform):
    r"""Radial flow x = z + beta h(r) (z - z0), h(r) = 1 / (alpha + r), r = ||z - z0||.

    alpha = softplus(alpha'), beta = -alpha + softplus(beta') >= -alpha, which makes x a
    bijection (appendix A.2); ladj = (D - 1) log(1 + beta h) + log(1 + beta h + beta h'(r) r)
    = (D - 1) log(1 + beta / (alpha + r)) + log(1 + alpha beta / (alpha + r)^2), O(D).

    The inverse reduces to the scalar equation r (1 + beta / (alpha + r)) = ||x - z0|| = s,
    i.e. the quadratic r^2 + (alpha + beta - s) r - alpha s = 0, whose only non-negative root
    is taken in closed form (the cancellation-free form of each sign), so the inverse is
    exact up to rounding; then z = z0 + (x - z0) / (1 + beta / (alpha + r)).

    Parameters z0 (D,), alpha', beta' () are free or an affine function of a context. At
    initialisation alpha' = beta' = 0, so beta = 0 (the identity), and z0 ~ N(0, I).

    Shapes: z, x (*batch, features); context (*batch, context_features); ladj (*batch,).

    Reference: Rezende & Mohamed. Variational inference with normalizing flows. ICML 2015,
    eq. (14) and appendix A.2.

    Args:
        features: number of features D.
        context_features: size of the context, 0 for free parameters.
    """

    def __init__(self, features: int, context_features: int = 0):
        super().__init__()
        self.features = features
        self.conditioner = ContextParameters({"z0": torch.randn(features), "alpha": (), "beta": ()}, context_features)
        read_renamed(self, "params", "conditioner")  # checkpoints of pushforward 0.1

    def parameters_hat(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(z0, alpha, beta) with alpha > 0 and beta >= -alpha; shapes (*batch, D), (*batch,), (*batch,)."""
        p = self.conditioner(context)
        alpha = F.softplus(p["alpha"])
        return p["z0"], alpha, F.softplus(p["beta"]) - alpha

    def _ladj(self, alpha: Tensor, beta: Tensor, r: Tensor) -> Tensor:
        return (self.features - 1) * torch.log1p(beta / (alpha + r)) + torch.log1p(alpha * beta / (alpha + r) ** 2)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z0, alpha, beta = self.parameters_hat(context)
        r = torch.linalg.vector_norm(z - z0, dim=-1)
        x = z + (beta / (alpha + r)).unsqueeze(-1) * (z - z0)
        return x, self._ladj(alpha, beta, r)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z0, alpha, beta = self.parameters_hat(context)
        s = torch.linalg.vector_norm(x - z0, dim=-1)
        c = alpha + beta - s
        # both roots' forms share d = sqrt(c^2 + 4 alpha s) + |c|: (d / 2 if c <= 0, 2 alpha s / d if c > 0)
        d = (torch.sqrt(c.square() + 4 * alpha * s) + c.abs()).clamp(min=torch.finfo(x.dtype).tiny)
        r = torch.where(c > 0, 2 * alpha * s / d, d / 2)
        z = z0 + (x - z0) / (1 + beta / (alpha + r)).unsqueeze(-1)
        return z, -self._ladj(alpha, beta, r)
