"""sepconv: efficient convolutions for PyTorch.

Depthwise-separable convolution as a drop-in for ``nn.Conv2d``, Winograd minimal filtering,
measured algorithm choice, spatially separable and versatile filters, exact cost analysis,
model conversion and fast inference.

Every public name resolves after a plain ``import sepconv``; submodules load on first use, so
the import itself costs little on top of torch.

Example:
    >>> import torch, sepconv
    >>> layer = sepconv.DepthwiseSeparableConv2d(16, 32, 3, padding=1)
    >>> sum(p.numel() for p in layer.parameters())  # 16*9 + 16*32
    656
    >>> layer(torch.randn(1, 16, 20, 20)).shape
    torch.Size([1, 32, 20, 20])
"""

from __future__ import annotations

import importlib

from ._version import __version__

# public name -> the submodule that defines it
_NAMES = {
    "DepthwiseConv2d": "layers", "DepthwiseSeparableConv2d": "layers",
    "SpatiallySeparableConv2d": "layers", "VersatileConv2d": "layers",
    "depthwise_conv2d": "functional", "depthwise_separable_conv2d": "functional",
    "winograd_conv2d": "functional", "winograd_filters": "functional", "versatile_conv2d": "functional",
    "explain": "algorithms", "list_algorithms": "algorithms",
    "optimize_for_inference": "convert", "count": "analysis",
    "create_model": "models", "list_models": "models",
}
_SUBMODULES = ("algorithms", "analysis", "bench", "cli", "convert", "data", "functional", "kernels", "keras",
               "layers", "models", "spec", "timing", "train")

__all__ = ["__version__", *_NAMES, *_SUBMODULES]


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'sepconv' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
