"""sepconv: efficient convolutions for PyTorch.

Depthwise-separable convolution as a drop-in for ``nn.Conv2d``, Winograd minimal filtering,
measured algorithm choice, spatially separable and versatile filters, and exact cost analysis.

Example:
    >>> import torch, sepconv
    >>> layer = sepconv.DepthwiseSeparableConv2d(16, 32, 3, padding=1)
    >>> sum(p.numel() for p in layer.parameters())  # 16*9 + 16*32
    656
    >>> layer(torch.randn(1, 16, 20, 20)).shape
    torch.Size([1, 32, 20, 20])
"""

__version__ = "0.1.0"

from . import algorithms, functional
from .algorithms import explain, list_algorithms
from .functional import depthwise_conv2d, depthwise_separable_conv2d, winograd_conv2d, winograd_filters
from .layers import DepthwiseConv2d, DepthwiseSeparableConv2d

__all__ = [
    "__version__",
    "algorithms",
    "functional",
    "explain",
    "list_algorithms",
    "depthwise_conv2d",
    "depthwise_separable_conv2d",
    "winograd_conv2d",
    "winograd_filters",
    "DepthwiseConv2d",
    "DepthwiseSeparableConv2d",
]
