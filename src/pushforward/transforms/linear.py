r"""Linear transforms x = W z + b, each W parametrised so that its log-determinant is cheap.

Every class keeps W in a form with an O(D) log-abs-det-Jacobian (triangular, LU, QR,
Householder) or falls back to O(D^3) (:class:`Dense`, for small D); inverses are triangular
solves or products of reflections, exact up to rounding. :class:`Householder` and
:class:`ConvexCombinationTriangular` can be amortised from a context, as in the VAE papers
that introduced them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Chain, Transform
from ..nn.parameters import ContextParameters, read_renamed

__all__ = [
    "Permutation", "Triangular", "LowerTriangular", "UpperTriangular", "ConvexCombinationTriangular",
    "Householder", "householder", "LU", "QR", "Dense", "lu_rotation", "lu_lower", "lu_upper",
]


def _matvec(matrix: Tensor, z: Tensor) -> Tensor:
    """matrix @ z over the last dimension: (D, M) or (*batch, D, M) with (*batch, M) -> (*batch, D)."""
    if matrix.dim() == 2:  # one matrix for the whole batch: a single matrix product
        return z @ matrix.mT
    return (matrix @ z.unsqueeze(-1)).squeeze(-1)


def _solve(matrix: Tensor, x: Tensor, upper: bool | None = None, unitriangular: bool = False) -> Tensor:
    """Solve matrix @ z = x for z, triangular (``upper`` True/False) or dense (``upper`` None).

    Shapes: matrix (D, D) or (*batch, D, D); x (*batch, D); returns z (*batch, D).
    """
    if matrix.dim() == 2:  # one matrix: a single solve with every example as a column
        rhs = x.reshape(-1, x.shape[-1]).T
    else:
        rhs = x.unsqueeze(-1)
    if upper is None:
        z = torch.linalg.solve(matrix, rhs)
    else:
        z = torch.linalg.solve_triangular(matrix, rhs, upper=upper, unitriangular=unitriangular)
    return z.T.reshape(x.shape) if matrix.dim() == 2 else z.squeeze(-1)


def _constant_ladj(value: Tensor, like: Tensor) -> Tensor:
    return value.to(like.dtype).expand(like.shape[:-1])


class Permutation(Transform):
    r"""Fixed permutation of the features, x = z[perm]; ladj = 0 (|det P| = 1).

    Used between coupling or autoregressive layers so that every feature gets transformed
    (Dinh et al. 2017; Kingma & Dhariwal 2018 compare reverse and random permutations).

    Shapes: z, x (*batch, features); ladj (*batch,).

    Args:
        permutation: a permutation of range(features).

    Raises:
        ValueError: if ``permutation`` is not a permutation of range(len(permutation)).
    """

    def __init__(self, permutation: Sequence[int] | Tensor):
        super().__init__()
        perm = torch.as_tensor(permutation, dtype=torch.long)
        if sorted(perm.tolist()) != list(range(len(perm))):
            raise ValueError(f"not a permutation of range({len(perm)}): {perm.tolist()}")
        self.register_buffer("permutation", perm.clone())
        self.register_buffer("inverse_permutation", torch.argsort(perm))

    @classmethod
    def reverse(cls, features: int) -> "Permutation":
        """The permutation that reverses the order of the features."""
        return cls(torch.arange(features - 1, -1, -1))

    @classmethod
    def random(cls, features: int, seed: int = 0) -> "Permutation":
        """A random permutation, fixed by ``seed``."""
        return cls(torch.randperm(features, generator=torch.Generator().manual_seed(seed)))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z[..., self.permutation], z.new_zeros(z.shape[:-1])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[..., self.inverse_permutation], x.new_zeros(x.shape[:-1])


class Triangular(Transform):
    r"""Affine map x = T z + b with T lower (or upper) triangular with a positive diagonal.

    T = tril(W, -1) + diag(exp(d)) (``upper=False``) or triu(W, 1) + diag(exp(d));
    ladj = sum_i d_i, O(D); the inverse is a triangular solve, O(D^2) per example.

    Shapes: z, x (*batch, features); ladj (*batch,).

    Args:
        features: number of features D.
        upper: upper instead of lower triangular.
    """

    def __init__(self, features: int, upper: bool = False):
        super().__init__()
        self.upper = upper
        self.weight = nn.Parameter(torch.zeros(features, features))
        self.log_diagonal = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def matrix(self) -> Tensor:
        """The triangular matrix T, shape (features, features)."""
        part = torch.triu(self.weight, 1) if self.upper else torch.tril(self.weight, -1)
        return part + torch.diag(torch.exp(self.log_diagonal))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _matvec(self.matrix(), z) + self.bias, _constant_ladj(self.log_diagonal.sum(), z)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = _solve(self.matrix(), x - self.bias, upper=self.upper)
        return z, _constant_ladj(-self.log_diagonal.sum(), x)

    def extra_repr(self) -> str:
        return f"features={len(self.bias)}, upper={self.upper}"


class LowerTriangular(Triangular):
    r""":class:`Triangular` with a lower-triangular L: x = L z + b.

    With L the Cholesky factor of a covariance this is a full-covariance Gaussian's
    reparametrisation (see :meth:`gaussian`).

    Shapes: z, x (*batch, features); ladj (*batch,).

    Args:
        features: number of features D.
    """

    def __init__(self, features: int):
        super().__init__(features, upper=False)

    @classmethod
    def gaussian(cls, mean: Tensor, covariance: Tensor) -> "LowerTriangular":
        """The map z -> mean + chol(covariance) z, which pushes N(0, I) to N(mean, covariance).

        Raises:
            ValueError: if ``covariance`` is not symmetric positive definite.
        """
        chol, info = torch.linalg.cholesky_ex(covariance)
        if int(info) != 0:
            raise ValueError("covariance is not positive definite")
        t = cls(len(mean)).to(mean.dtype)
        with torch.no_grad():
            t.weight.copy_(chol)
            t.log_diagonal.copy_(torch.log(torch.diagonal(chol)))
            t.bias.copy_(mean)
        return t


class UpperTriangular(Triangular):
    r""":class:`Triangular` with an upper-triangular U: x = U z + b.

    Shapes: z, x (*batch, features); ladj (*batch,).

    Args:
        features: number of features D.
    """

    def __init__(self, features: int):
        super().__init__(features, upper=True)


class ConvexCombinationTriangular(Transform):
    r"""Volume-preserving x = L z with L a convex combination of unit lower-triangular matrices.

    L = sum_k y_k L_k, L_k = I + tril(W_k, -1), y = softmax(logits), the logits free or an
    affine function of a context (the encoder's features in a VAE). Since the weights sum to
    one, L has a unit diagonal: ladj = 0; the inverse is a unit-triangular solve, O(D^2).
    Cost O(K D^2) per example with a context (L differs per example), O(D^2) without.

    Shapes: z, x (*batch, features); context (*batch, context_features); ladj (*batch,).

    Reference: Tomczak & Welling. Improving variational auto-encoders using convex
    combination linear inverse autoregressive flow. Benelearn 2017. arXiv:1706.02326
    (ccLinIAF).

    Args:
        features: number of features D.
        components: number of matrices K.
        context_features: size of the context, 0 for fixed weights.
    """

    def __init__(self, features: int, components: int = 5, context_features: int = 0):
        super().__init__()
        self.conditioner = ContextParameters({"logits": (components,)}, context_features)
        read_renamed(self, "params", "conditioner")  # checkpoints of pushforward 0.1
        self.lower = nn.Parameter(torch.zeros(components, features, features))

    def weights(self, context: Tensor | None = None) -> Tensor:
        """The convex weights y, shape (*batch, components) (or (components,) without context)."""
        return F.softmax(self.conditioner(context)["logits"], dim=-1)

    def matrix(self, context: Tensor | None = None) -> Tensor:
        """L, shape (*batch, features, features) (or (features, features) without context)."""
        eye = torch.eye(self.lower.shape[-1], dtype=self.lower.dtype, device=self.lower.device)
        return eye + torch.einsum("...k,kij->...ij", self.weights(context), torch.tril(self.lower, -1))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _matvec(self.matrix(context), z), z.new_zeros(z.shape[:-1])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = _solve(self.matrix(context), x, upper=False, unitriangular=True)
        return z, x.new_zeros(x.shape[:-1])


def householder(z: Tensor, vectors: Tensor, transpose: bool = False) -> Tensor:
    r"""Apply Q = H_K ... H_1 (or Q^T = H_1 ... H_K) to z, H_k = I - 2 v_k v_k^T / ||v_k||^2.

    Each reflection costs O(D); a zero vector acts as the identity.

    Shapes: z (*batch, D); vectors (*batch, K, D) or (K, D), the v_k; returns (*batch, D).
    """
    tiny = torch.finfo(vectors.dtype).tiny  # a zero v_k then leaves z unchanged instead of giving 0/0
    order = range(vectors.shape[-2] - 1, -1, -1) if transpose else range(vectors.shape[-2])
    for k in order:
        v = vectors[..., k, :]
        z = z - 2 * (z * v).sum(-1, keepdim=True) / (v * v).sum(-1, keepdim=True).clamp(min=tiny) * v
    return z


class Householder(Transform):
    r"""Orthogonal x = H_K ... H_1 z, a product of K Householder reflections; ladj = 0.

    H_k = I - 2 v_k v_k^T / ||v_k||^2; each reflection costs O(D) per example and the
    inverse applies them in reverse order. The vectors are free or an affine function of a
    context (the paper computes them from the encoder). D reflections reach every orthogonal
    matrix of determinant (-1)^D. A volume-preserving rotation only: chain it with an
    element-wise scale to change a density's spread (see ``HouseholderFlow``).

    Shapes: z, x (*batch, features); context (*batch, context_features); ladj (*batch,).

    Reference: Tomczak & Welling. Improving variational auto-encoders using Householder
    flow. NeurIPS 2016 workshop on Bayesian deep learning. arXiv:1611.09630.

    Args:
        features: number of features D.
        reflections: number of reflections K (default D).
        context_features: size of the context, 0 for free vectors.
    """

    def __init__(self, features: int, reflections: int | None = None, context_features: int = 0):
        super().__init__()
        reflections = features if reflections is None else reflections
        self.conditioner = ContextParameters({"vectors": torch.randn(reflections, features)}, context_features)
        read_renamed(self, "params", "conditioner")  # checkpoints of pushforward 0.1

    def matrix(self, context: Tensor | None = None) -> Tensor:
        """Q = H_K ... H_1, shape (*batch, features, features) (or (features, features))."""
        vectors = self.conditioner(context)["vectors"]
        eye = torch.eye(vectors.shape[-1], dtype=vectors.dtype, device=vectors.device)
        return householder(eye, vectors.unsqueeze(-3)).mT  # row i of the product is (Q e_i)^T

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return householder(z, self.conditioner(context)["vectors"]), z.new_zeros(z.shape[:-1])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return householder(x, self.conditioner(context)["vectors"], transpose=True), x.new_zeros(x.shape[:-1])


def lu_rotation(features: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""The LU parametrisation of a random rotation, Glow's initialisation of W = P L U.

    Draws a rotation (QR of a Gaussian matrix, from torch's global RNG) and factors it,
    W = P L U; returns ``(permutation, lower, upper, log_diagonal, sign)`` with
    (P y)_i = y_{permutation[i]}, ``log_diagonal`` = log|diag U| and ``sign`` = sign(diag U),
    which :func:`lu_lower` and :func:`lu_upper` turn back into L and U.

    Shapes: permutation (D,) long; lower, upper (D, D); log_diagonal, sign (D,).

    Reference: Kingma & Dhariwal. Glow: generative flow with invertible 1x1 convolutions.
    NeurIPS 2018, section 3.2.
    """
    rotation = torch.linalg.qr(torch.randn(features, features))[0]
    p, lower, upper = torch.linalg.lu(rotation)
    diagonal = torch.diagonal(upper)
    return p.argmax(-1), lower, upper, torch.log(diagonal.abs()), torch.sign(diagonal)


def lu_lower(lower: Tensor) -> Tensor:
    """The unit lower-triangular L = tril(lower, -1) + I, shape (D, D)."""
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
    return torch.tril(lower, -1) + eye


def lu_upper(upper: Tensor, log_diagonal: Tensor, sign: Tensor) -> Tensor:
    """The upper-triangular U = triu(upper, 1) + diag(sign * exp(log_diagonal)), shape (D, D)."""
    return torch.triu(upper, 1) + torch.diag(sign * torch.exp(log_diagonal))


class LU(Transform):
    r"""Affine map x = P L U z + b with the LU parametrisation of Glow's invertible 1x1 convolution.

    P is a fixed permutation, L unit lower triangular, U = triu(W_U, 1) + diag(sign * exp(d))
    with the signs fixed; ladj = sum_i d_i, O(D); the inverse is a permutation and two
    triangular solves, O(D^2). Initialised, as in Glow, at the LU decomposition of a random
    rotation.

    Shapes: z, x (*batch, features); ladj (*batch,).

    Reference: Kingma & Dhariwal. Glow: generative flow with invertible 1x1 convolutions.
    NeurIPS 2018, section 3.2.

    Args:
        features: number of features D.
    """

    def __init__(self, features: int):
        super().__init__()
        permutation, lower, upper, log_diagonal, sign = lu_rotation(features)
        self.permutation = Permutation(permutation)
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(upper)
        self.log_diagonal = nn.Parameter(log_diagonal)
        self.register_buffer("sign", sign)
        self.bias = nn.Parameter(torch.zeros(features))

    def _lower(self) -> Tensor:
        return lu_lower(self.lower)

    def _upper(self) -> Tensor:
        return lu_upper(self.upper, self.log_diagonal, self.sign)

    def matrix(self) -> Tensor:
        """W = P L U, shape (features, features)."""
        return self._lower()[self.permutation.permutation] @ self._upper()

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _matvec(self.matrix(), z) + self.bias, _constant_ladj(self.log_diagonal.sum(), z)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y = self.permutation.inverse(x - self.bias)[0]
        z = _solve(self._upper(), _solve(self._lower(), y, upper=False, unitriangular=True), upper=True)
        return z, _constant_ladj(-self.log_diagonal.sum(), x)


class QR(Chain):
    r"""Affine map x = Q (R z + c): an upper-triangular map then a product of reflections.

    R = triu(W, 1) + diag(exp(d)) (an :class:`UpperTriangular`), Q = H_K ... H_1 (a
    :class:`Householder`), so W = Q R with ladj = sum_i d_i, O(D); the inverse is a
    reflection product and one triangular solve.

    Shapes: z, x (*batch, features); ladj (*batch,).

    Reference: Hoogeboom, van den Berg & Welling. Emerging convolutions for generative
    normalizing flows. ICML 2019 (their QR 1x1 convolutions).

    Args:
        features: number of features D.
        reflections: number of reflections K of Q (default D).
    """

    def __init__(self, features: int, reflections: int | None = None):
        super().__init__(UpperTriangular(features), Householder(features, reflections))

    def matrix(self) -> Tensor:
        """W = Q R, shape (features, features)."""
        return self[1].matrix() @ self[0].matrix()


class Dense(Transform):
    r"""Affine map x = W z + b with an unconstrained W, for small D.

    ladj = log|det W| by an LU decomposition (slogdet), O(D^3) per call; the inverse is a
    dense solve. Initialised at the identity. Not invertible if W becomes singular.

    Shapes: z, x (*batch, features); ladj (*batch,).

    Args:
        features: number of features D.
    """

    def __init__(self, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _matvec(self.weight, z) + self.bias, _constant_ladj(torch.linalg.slogdet(self.weight)[1], z)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = _solve(self.weight, x - self.bias)
        return z, _constant_ladj(-torch.linalg.slogdet(self.weight)[1], x)
