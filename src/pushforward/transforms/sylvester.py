r"""Sylvester flows: x = z + Q R tanh(R~ Q^T z + b), planar flows with M hidden units.

Q (D x M) has orthonormal columns and R, R~ (M x M) are upper triangular, so that by
Sylvester's determinant identity det(I_D + Q R diag(h') R~ Q^T) = det(I_M + R diag(h') R~),
the determinant of a triangular matrix: the log-abs-det-Jacobian is O(M). Where Q comes from
is the flow's *basis*: :class:`OrthogonalBasis` (any M <= D columns, orthogonalised
iteratively), :class:`HouseholderBasis` (a product of reflections, M = D) and
:class:`PermutationBasis` (the identity or the reversal, M = D: "triangular" Sylvester flows).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import Transform
from ..nn.parameters import ContextParameters, read_renamed
from .linear import _matvec, _solve, householder
from .numerical import ConvergenceError, default_tolerance, newton

__all__ = ["Sylvester", "OrthogonalBasis", "HouseholderBasis", "PermutationBasis", "orthogonalize"]


def orthogonalize(q: Tensor, tol: float | None = None, max_iter: int = 100) -> Tensor:
    r"""The orthonormal factor of q by the iteration Q <- Q (I + (I - Q^T Q) / 2), differentiable.

    q is first divided by sqrt(c), c the largest absolute column sum of q^T q (c >= ||q||_2^2),
    so that ||Q^T Q - I||_2 < 1 whenever q has full column rank, the condition for
    convergence, and a q that is already orthonormal is left as it is (dividing by the
    Frobenius norm, as the paper does, would shrink it to singular values 1/sqrt(M) and cost
    about eight iterations); the iteration then converges to the orthonormal polar factor of
    q, which no positive scale changes, quadratically near the end. It stops once every entry
    of Q^T Q - I is at most tol in absolute value. Gradients flow through the iterations.

    Shapes: q (*batch, D, M) with M <= D; returns (*batch, D, M) with Q^T Q = I (to tol).

    Reference: van den Berg, Hasenclever, Tomczak & Welling. Sylvester normalizing flows for
    variational inference. UAI 2018, eq. (13) (after Björck & Bowie 1971, Kovarik 1970).

    Args:
        q: the matrices to orthogonalise.
        tol: tolerance on the entries of Q^T Q - I (default 1e-10 in float64, 1e-5 below).
        max_iter: the largest number of iterations.

    Raises:
        ValueError: if q has more columns than rows.
        ConvergenceError: if the tolerance is not met in ``max_iter`` iterations (q is then
            rank-deficient or nearly so).
    """
    if q.shape[-1] > q.shape[-2]:
        raise ValueError(f"cannot orthogonalise {q.shape[-1]} columns in dimension {q.shape[-2]}")
    if q.numel() == 0:  # an empty batch: nothing to orthogonalise (and no entry to compare with tol)
        return q
    tol = default_tolerance(q.dtype) if tol is None else tol
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    gram = q.mT @ q
    q = q / gram.abs().sum(-2, keepdim=True).amax(-1, keepdim=True).sqrt()
    for _ in range(max_iter):
        defect = eye - q.mT @ q
        if float(defect.detach().abs().max()) <= tol:
            return q
        q = q @ (eye + defect / 2)
    raise ConvergenceError(f"orthogonalize did not reach tolerance {tol:g} in {max_iter} iterations")


class OrthogonalBasis:
    r"""Q with M <= D orthonormal columns, from a free (or amortised) D x M matrix by :func:`orthogonalize`.

    Initialised at a random matrix with orthonormal columns.

    Reference: van den Berg et al. 2018, section 3.1 (orthogonal Sylvester flows, O-SNF).

    Args:
        columns: M (default D).
        tol, max_iter: as :func:`orthogonalize`.
    """

    def __init__(self, columns: int | None = None, tol: float | None = None, max_iter: int = 100):
        self.columns, self.tol, self.max_iter = columns, tol, max_iter

    def width(self, features: int) -> int:
        """M for D = ``features``."""
        return features if self.columns is None else self.columns

    def init(self, features: int) -> dict[str, Tensor]:
        """Initial values of the basis's parameters."""
        return {"basis": torch.linalg.qr(torch.randn(features, self.width(features)))[0]}

    def __call__(self, params: dict[str, Tensor], like: Tensor) -> Tensor:
        return orthogonalize(params["basis"], self.tol, self.max_iter)

    def __repr__(self) -> str:
        return f"OrthogonalBasis(columns={self.columns})"


class HouseholderBasis:
    r"""Q = H_K ... H_1, a product of K Householder reflections (M = D).

    Reference: van den Berg et al. 2018, section 3.2 (Householder Sylvester flows, H-SNF).

    Args:
        reflections: K.
    """

    def __init__(self, reflections: int = 4):
        self.reflections = reflections

    def width(self, features: int) -> int:
        return features

    def init(self, features: int) -> dict[str, Tensor]:
        return {"vectors": torch.randn(self.reflections, features)}

    def __call__(self, params: dict[str, Tensor], like: Tensor) -> Tensor:
        vectors = params["vectors"]
        eye = torch.eye(vectors.shape[-1], dtype=vectors.dtype, device=vectors.device)
        return householder(eye, vectors.unsqueeze(-3)).mT

    def __repr__(self) -> str:
        return f"HouseholderBasis(reflections={self.reflections})"


class PermutationBasis:
    r"""Q = I or the reversal permutation (M = D): "triangular" Sylvester flows.

    The paper alternates the two between layers, so that R and R~ act upper- and
    lower-triangularly in turn.

    Reference: van den Berg et al. 2018, section 3.3 (triangular Sylvester flows, T-SNF).

    Args:
        reverse: the reversal instead of the identity.
    """

    def __init__(self, reverse: bool = False):
        self.reverse = reverse

    def width(self, features: int) -> int:
        return features

    def init(self, features: int) -> dict[str, Tensor]:
        return {}

    def __call__(self, params: dict[str, Tensor], like: Tensor) -> Tensor:
        eye = torch.eye(like.shape[-1], dtype=like.dtype, device=like.device)
        return eye.flip(-1) if self.reverse else eye

    def __repr__(self) -> str:
        return f"PermutationBasis(reverse={self.reverse})"


def _triangular(raw: Tensor) -> Tensor:
    """Upper triangle of ``raw`` with (1 - eps) tanh on its diagonal, so |R_ii| < 1."""
    shrink = 1 - torch.finfo(raw.dtype).eps  # |R_ii| < 1 even where tanh rounds to +-1
    return torch.triu(raw, 1) + torch.diag_embed(shrink * torch.tanh(torch.diagonal(raw, dim1=-2, dim2=-1)))


class Sylvester(Transform):
    r"""Sylvester flow x = z + Q R tanh(R~ Q^T z + b).

    Q (D x M) has orthonormal columns (from ``basis``); R, R~ (M x M) are upper triangular
    with diagonals tanh(.) in (-1, 1), so R_ii R~_ii > -1 = -1 / sup tanh', the paper's
    condition for invertibility (theorem 2): each equation of the triangular system below is
    then strictly increasing in its unknown. By Sylvester's identity,
    ladj = sum_i log(1 + tanh'(a_i) R_ii R~_ii), a = R~ Q^T z + b, O(M).

    The inverse leaves the complement of Q's columns unchanged and solves, for y = Q^T z,
    the triangular system y + R tanh(R~ y + b) = Q^T x by damped Newton iterations
    (:func:`~.numerical.newton`) with the upper-triangular Jacobian I + R diag(tanh') R~
    (a triangular solve per iteration), until each Newton step is at most
    tol * max(1, |y_i|); the error of z is then at most about ||R|| ||R~|| times that. The
    inverse is differentiable (implicit function theorem).

    Parameters (Q's, R, R~, b) are free or an affine function of a context, as the paper's
    encoder amortises them. Initialised at the identity: R = 0, b = 0, R~ ~ N(0, 1/M).

    Shapes: z, x (*batch, features); context (*batch, context_features); ladj (*batch,).

    Reference: van den Berg, Hasenclever, Tomczak & Welling. Sylvester normalizing flows for
    variational inference. UAI 2018. arXiv:1803.05649.

    Args:
        features: number of features D.
        context_features: size of the context, 0 for free parameters.
        basis: where Q comes from (default ``OrthogonalBasis()``, M = D).
        tol: tolerance of the inverse (default 1e-10 in float64, 1e-5 below).
        max_iter: the largest number of Newton iterations of the inverse.

    Raises:
        ValueError: if the basis has more columns than ``features``.
        ConvergenceError: if Q's orthogonalisation or the inverse does not converge.
    """

    def __init__(self, features: int, context_features: int = 0,
                 basis: OrthogonalBasis | HouseholderBasis | PermutationBasis | None = None,
                 tol: float | None = None, max_iter: int = 100):
        super().__init__()
        self.basis = OrthogonalBasis() if basis is None else basis
        m = self.basis.width(features)
        if not 1 <= m <= features:
            raise ValueError(f"a Sylvester flow needs 1 <= M <= D, got M={m}, D={features}")
        # R = 0 starts at the identity; an O(1) R~ gives R an O(1) gradient there (as planar's w, u)
        init = {"r": (m, m), "r_tilde": torch.randn(m, m) / math.sqrt(m), "bias": (m,)}
        self.conditioner = ContextParameters({**self.basis.init(features), **init}, context_features)
        read_renamed(self, "params", "conditioner")  # checkpoints of pushforward 0.1
        self.tol, self.max_iter = tol, max_iter

    def parts(self, like: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(Q, R, R~, b), shapes (*batch, D, M), (*batch, M, M), (*batch, M, M), (*batch, M)."""
        p = self.conditioner(context)
        return self.basis(p, like), _triangular(p["r"]), _triangular(p["r_tilde"]), p["bias"]

    def extra_repr(self) -> str:
        return f"basis={self.basis!r}"

    @staticmethod
    def _ladj(r: Tensor, r_tilde: Tensor, a: Tensor) -> Tensor:
        diagonal = torch.diagonal(r, dim1=-2, dim2=-1) * torch.diagonal(r_tilde, dim1=-2, dim2=-1)
        return torch.log1p(diagonal * (1 - torch.tanh(a).square())).sum(-1)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, r, r_tilde, b = self.parts(z, context)
        a = _matvec(r_tilde, _matvec(q.mT, z)) + b
        return z + _matvec(q, _matvec(r, torch.tanh(a))), self._ladj(r, r_tilde, a)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, r, r_tilde, b = self.parts(x, context)
        target = _matvec(q.mT, x)
        eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)

        def residual(y: Tensor) -> Tensor:
            return y + _matvec(r, torch.tanh(_matvec(r_tilde, y) + b)) - target

        def solve(y: Tensor, f: Tensor) -> Tensor:
            slope = 1 - torch.tanh(_matvec(r_tilde, y) + b).square()
            jacobian = eye + (r * slope.unsqueeze(-2)) @ r_tilde
            return _solve(jacobian, f, upper=True)

        y = newton(residual, solve, target, self.tol, self.max_iter)
        a = _matvec(r_tilde, y) + b
        return x - _matvec(q, _matvec(r, torch.tanh(a))), -self._ladj(r, r_tilde, a)
