r"""Named flows (presets), each a :class:`~pushforward.core.Flow` with its paper's defaults.

Every preset takes ``(features, context_features=0, transforms=..., ...)``; ``PRESETS`` maps
the names that ``pushforward fit --flow NAME`` accepts to the classes.
"""

from __future__ import annotations

import inspect

from ..core import Flow
from .classic import IAF, MAF, NSF, RealNVP, stack
from .neural import BNAF, NAF, NICE, UMNN
from .linear import HouseholderFlow, LUFlow
from .planar import PlanarFlow, RadialFlow, SylvesterFlow
from .polynomial import BernsteinFlow, SOSFlow

__all__ = ["MAF", "IAF", "RealNVP", "NSF", "NICE", "NAF", "BNAF", "UMNN",
           "PlanarFlow", "RadialFlow", "SylvesterFlow", "HouseholderFlow", "LUFlow", "PRESETS", "preset_options", "stack",
           "SOSFlow", "BernsteinFlow"]

PRESETS: dict[str, type[Flow]] = {
    "maf": MAF, "iaf": IAF, "realnvp": RealNVP, "nsf": NSF,
    "nice": NICE, "naf": NAF, "bnaf": BNAF, "umnn": UMNN,
    "planar": PlanarFlow, "radial": RadialFlow, "sylvester": SylvesterFlow, "householder": HouseholderFlow,
    "lu": LUFlow,
    "sos": SOSFlow, "bernstein": BernsteinFlow,
}


def preset_options(name: str) -> set[str]:
    """The keyword arguments that the preset ``name`` takes besides ``features``.

    Raises:
        ValueError: for an unknown preset name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown flow {name!r} (known: {', '.join(sorted(PRESETS))})")
    return set(inspect.signature(PRESETS[name]).parameters) - {"features"}
