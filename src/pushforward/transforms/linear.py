r"""Linear transforms x = W z + b with structured W. So far: permutations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..core import Transform

__all__ = ["Permutation"]


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
