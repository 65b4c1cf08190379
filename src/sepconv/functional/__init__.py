"""Stateless tensor functions: depthwise, separable, Winograd, versatile."""

from .depthwise import depthwise_conv2d, depthwise_separable_conv2d
from .versatile import versatile_conv2d
from .winograd import winograd_conv2d, winograd_filters

__all__ = ["depthwise_conv2d", "depthwise_separable_conv2d", "versatile_conv2d", "winograd_conv2d",
           "winograd_filters"]
