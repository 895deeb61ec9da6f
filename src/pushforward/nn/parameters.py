"""Parameters of a transform that are free, or amortised from a context."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["ContextParameters", "read_renamed"]


class ContextParameters(nn.Module):
    r"""Named parameter tensors, learned directly or as an affine function of a context.

    Each named tensor is theta = theta_0 + reshape(A c + a), with theta_0 learned and the
    linear map (A, a) zero at initialisation, so every context starts at theta_0. This is
    the amortisation of the flows used in VAEs, where an encoder's features give the flow's
    parameters (Rezende & Mohamed 2015, section 4; Tomczak & Welling 2016; van den Berg et
    al. 2018, section 4): ``context`` is then the encoder's last hidden layer.

    Shapes: context (*batch, context_features) or None; each output (*batch, *shape) with a
    context, (*shape) without one (broadcast it against the input).

    Args:
        shapes: name -> initial value of theta_0 (a tensor, which also gives the shape) or a
            shape (a tuple, initialised at zero).
        context_features: size of the context; 0 for free parameters (a context given to the
            forward call is then ignored).

    Raises:
        ValueError: in ``forward``, if the module was built with context_features > 0 and no
            context is given, or if the context does not end with ``context_features``.

    Example:
        >>> import torch
        >>> p = ContextParameters({"w": torch.ones(4), "b": ()}, context_features=3)
        >>> {k: tuple(v.shape) for k, v in p(torch.randn(2, 3)).items()}
        {'w': (2, 4), 'b': (2,)}
    """

    def __init__(self, shapes: Mapping[str, Tensor | tuple[int, ...]], context_features: int = 0):
        super().__init__()
        self.free = nn.ParameterDict()
        for name, value in shapes.items():
            init = torch.zeros(value) if isinstance(value, tuple) else torch.as_tensor(value).clone()
            self.free[name] = nn.Parameter(init.to(torch.get_default_dtype()))
        self.context_features = context_features
        sizes = [p.numel() for p in self.free.values()]
        self.context = nn.Linear(context_features, sum(sizes)) if context_features else None
        if self.context is not None:
            nn.init.zeros_(self.context.weight)
            nn.init.zeros_(self.context.bias)
        self._sizes = sizes

    def forward(self, context: Tensor | None = None) -> dict[str, Tensor]:
        if self.context is None:
            return dict(self.free.items())
        if context is None:
            raise ValueError(f"{type(self).__name__} was built with context_features={self.context_features} "
                             "and needs a context")
        if context.shape[-1] != self.context_features:
            raise ValueError(f"context has {context.shape[-1]} features, expected {self.context_features}")
        pieces = self.context(context).split(self._sizes, dim=-1)
        return {name: p + piece.reshape(piece.shape[:-1] + p.shape)
                for (name, p), piece in zip(self.free.items(), pieces)}


def read_renamed(module: nn.Module, old: str, new: str) -> None:
    """Let ``module`` load state dicts saved before its submodule ``new`` was named ``old``.

    Registers a load pre-hook that renames the keys ``<prefix>old.*`` to ``<prefix>new.*``,
    so that checkpoints written by earlier versions keep loading after the rename.
    """

    def rename(state_dict: dict, prefix: str, *args) -> None:
        for key in [k for k in state_dict if k.startswith(f"{prefix}{old}.")]:
            state_dict[f"{prefix}{new}.{key[len(prefix) + len(old) + 1:]}"] = state_dict.pop(key)

    module._register_load_state_dict_pre_hook(rename)
