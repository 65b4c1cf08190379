"""nn.Modules: parameters, argument validation, extra_repr; they call sepconv.functional."""

from .depthwise import DepthwiseConv2d, DepthwiseSeparableConv2d
from .spatial import SpatiallySeparableConv2d
from .versatile import VersatileConv2d

__all__ = ["DepthwiseConv2d", "DepthwiseSeparableConv2d", "SpatiallySeparableConv2d", "VersatileConv2d"]
