"""nn.Modules: parameters, argument validation, extra_repr; they call sepconv.functional."""

from .depthwise import DepthwiseConv2d, DepthwiseSeparableConv2d

__all__ = ["DepthwiseConv2d", "DepthwiseSeparableConv2d"]
