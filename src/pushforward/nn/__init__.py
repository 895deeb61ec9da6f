"""Conditioners: the networks that predict the parameters of element-wise maps."""

from .convnet import ConvNet, cat_context_channels
from .made import MADE
from .masked import MaskedLinear, SigmoidTanh
from .mlp import MLP, cat_context
from .parameters import ContextParameters
from .lipschitz import LipschitzMLP, LipSwish, SpectralLinear

__all__ = ["MADE", "MaskedLinear", "MLP", "cat_context", "ContextParameters", "ConvNet", "cat_context_channels", "SigmoidTanh", "LipschitzMLP", "LipSwish",
           "SpectralLinear"]
