r"""Named flows (presets), each a :class:`~pushforward.core.Flow` with its paper's defaults.

Every vector preset takes ``(features, context_features=0, transforms=..., ...)`` and every
image preset ``(shape, context_features=0, levels=..., ...)`` with shape (C, H, W); ``PRESETS``
and ``IMAGE_PRESETS`` map the names that ``pushforward fit --flow NAME`` accepts to the classes.

A preset module is named after the transform module its layers come from: ``flows/coupling.py``
(NICE, RealNVP, NSF) is built of :mod:`pushforward.transforms.coupling` layers,
``autoregressive.py`` (MAF, IAF), ``neural.py`` (NAF, B-NAF, UMNN), ``polynomials.py`` (SOS,
Bernstein), ``linear.py``, ``planar_radial.py``, ``sylvester.py``, ``residual.py`` and
``continuous.py`` likewise; ``image.py`` holds the multi-scale image flows (Glow, RealNVP) and
``stack.py`` the layer stacks they share.
"""

from __future__ import annotations

import inspect

from ..core import Flow
from .autoregressive import IAF, MAF
from .coupling import NICE, NSF, RealNVP
from .continuous import FFJORD
from .image import Glow, RealNVPImage
from .neural import BNAF, NAF, UMNN
from .linear import HouseholderFlow, LUFlow
from .planar_radial import PlanarFlow, RadialFlow
from .sylvester import SylvesterFlow
from .polynomials import BernsteinFlow, SOSFlow
from .residual import IResNet, ResidualFlow, ResidualFlowImage
from .stack import stack

__all__ = ["MAF", "IAF", "RealNVP", "NSF", "NICE", "NAF", "BNAF", "UMNN",
           "PlanarFlow", "RadialFlow", "SylvesterFlow", "HouseholderFlow", "LUFlow", "PRESETS", "preset_options", "stack",
           "SOSFlow", "BernsteinFlow", "FFJORD", "Glow", "RealNVPImage", "IMAGE_PRESETS", "ResidualFlow", "IResNet",
           "ResidualFlowImage"]

PRESETS: dict[str, type[Flow]] = {
    "maf": MAF, "iaf": IAF, "realnvp": RealNVP, "nsf": NSF,
    "nice": NICE, "naf": NAF, "bnaf": BNAF, "umnn": UMNN,
    "planar": PlanarFlow, "radial": RadialFlow, "sylvester": SylvesterFlow, "householder": HouseholderFlow,
    "lu": LUFlow,
    "sos": SOSFlow, "bernstein": BernsteinFlow, "ffjord": FFJORD,
    "residual": ResidualFlow, "iresnet": IResNet,
}
IMAGE_PRESETS: dict[str, type[Flow]] = {"glow": Glow, "realnvp-image": RealNVPImage,
                                         "residual-image": ResidualFlowImage}


def preset_options(name: str) -> set[str]:
    """The keyword arguments that the preset ``name`` (vector or image) takes besides its size
    (``features`` or ``shape``).

    Raises:
        ValueError: for an unknown preset name.
    """
    presets = {**PRESETS, **IMAGE_PRESETS}
    if name not in presets:
        raise ValueError(f"unknown flow {name!r} (known: {', '.join(sorted(presets))})")
    return set(inspect.signature(presets[name]).parameters) - {"features", "shape"}
