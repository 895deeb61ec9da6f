"""pushforward: normalizing flows for PyTorch.

Every transform maps the base space to the data space, x = g(z), and returns the
log-abs-det-Jacobian of the map it applied; a :class:`Flow` is the pushforward of a base
distribution by a transform. See DESIGN.md for the conventions.
"""

from . import data, dequantization, distributions, flows, integrations, latent, nn, testing, transforms
from .core import Chain, Flow, Inverse, Transform
from .distributions import DiagNormal, GaussianMixture, StandardNormal
from .flows import IAF, MAF, NSF, RealNVP
from .flows import BNAF, NAF, NICE, UMNN
from .flows import HouseholderFlow, LUFlow, PlanarFlow, RadialFlow, SylvesterFlow
from .flows import BernsteinFlow, SOSFlow
from .flows import FFJORD
from .flows import Glow, RealNVPImage
from .flows import IResNet, ResidualFlow, ResidualFlowImage
from .train import Evaluation, FitResult, evaluate, fit, log_likelihoods
from . import targets, vae, vi

__all__ = [
    "Transform", "Chain", "Inverse", "Flow", "StandardNormal", "DiagNormal", "GaussianMixture",
    "MAF", "IAF", "RealNVP", "NSF", "NICE", "NAF", "BNAF", "UMNN",
    "PlanarFlow", "RadialFlow", "SylvesterFlow", "HouseholderFlow", "LUFlow",
    "SOSFlow", "BernsteinFlow", "FFJORD", "Glow", "RealNVPImage", "ResidualFlow", "IResNet", "ResidualFlowImage",
    "fit", "evaluate", "log_likelihoods", "FitResult", "Evaluation",
    "flows", "distributions", "transforms", "nn", "testing", "data", "latent", "dequantization", "integrations",
    "targets", "vi", "vae",
]
__version__ = "0.1.0"
