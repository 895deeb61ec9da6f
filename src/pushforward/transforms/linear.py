r"""Linear transforms x = W z + b with structured W: permutations and triangular matrices."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..core import Transform

__all__ = ["Permutation", "LowerTriangular"]


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


class LowerTriangular(Transform):
    r"""Affine map x = L z + b with L lower triangular with a positive diagonal.

    L = tril(W, -1) + diag(exp(d)); ladj = sum_i d_i (O(D)); the inverse is a triangular solve
    (O(D^2) per example). With L the Cholesky factor of a covariance this is a full-covariance
    Gaussian's reparametrisation.

    Shapes: z, x (*batch, features); ladj (*batch,).

    Args:
        features: number of features D.
    """

    def __init__(self, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(features, features))
        self.log_diagonal = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(features))

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

    def matrix(self) -> Tensor:
        """The lower-triangular matrix L, shape (features, features)."""
        return torch.tril(self.weight, -1) + torch.diag(torch.exp(self.log_diagonal))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = self.log_diagonal.sum().expand(z.shape[:-1])
        return z @ self.matrix().T + self.bias, ladj

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        rhs = (x - self.bias).reshape(-1, x.shape[-1]).T
        z = torch.linalg.solve_triangular(self.matrix(), rhs, upper=False).T.reshape(x.shape)
        return z, (-self.log_diagonal.sum()).expand(x.shape[:-1])
