r"""Named flows (presets), each a :class:`~pushforward.core.Flow` with its paper's defaults.

Every preset takes ``(features, context_features=0, transforms=..., ...)``; ``PRESETS`` maps
the names that ``pushforward fit --flow NAME`` accepts to the classes.
"""

from __future__ import annotations

from ..core import Flow
from .classic import IAF, MAF, NSF, RealNVP, stack

__all__ = ["MAF", "IAF", "RealNVP", "NSF", "PRESETS", "stack"]

PRESETS: dict[str, type[Flow]] = {
    "maf": MAF, "iaf": IAF, "realnvp": RealNVP, "nsf": NSF,
}
