"""Depthwise and depthwise-separable convolution as functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import tensor
from ..algorithms.dispatch import plan_call


_AUTOCAST_DEVICES = frozenset({"cpu", "cuda", "xpu", "mps"})


def _autocast(x, *tensors):
    """Under torch.autocast, cast the floating-point arguments to the autocast dtype, as
    F.conv2d does, so that every algorithm (and the output dtype) agrees with it."""
    if not torch._C._is_any_autocast_enabled():   # (the common case, in a tenth of the full check)
        return (x, *tensors)
    device = x.device.type
    if device not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(device):
        return (x, *tensors)
    dtype = torch.get_autocast_dtype(device)
    cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
    return tuple(cast(t) for t in (x, *tensors))


def depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, algorithm="auto"):
    """Depthwise 2-D convolution: each input channel convolved with its own filters.

    Args:
        x: (N, C, H, W) or unbatched (C, H, W); NCHW or channels_last.
        weight: (C * depth_multiplier, 1, kh, kw), as ``nn.Conv2d(C, C*m, k, groups=C).weight``.
        bias: (C * depth_multiplier,) or None.
        stride, padding, dilation: as ``F.conv2d``; padding also ``"same"`` or ``"valid"``.
        algorithm: ``"auto"`` or a name from ``sepconv.algorithms.list_algorithms()``.

    Returns:
        (N, C * depth_multiplier, out_h, out_w), in the memory format of `x`. Under
        ``torch.autocast`` the inputs are cast to its dtype first, as for ``F.conv2d``.

    Example:
        >>> x, w = torch.randn(2, 8, 15, 9), torch.randn(8, 1, 3, 3)
        >>> y = depthwise_conv2d(x, w, padding=1, algorithm="direct")
        >>> torch.allclose(y, F.conv2d(x, w, padding=1, groups=8), atol=1e-5)
        True
    """
    owner = "depthwise_conv2d"
    tensor(owner, "input", x, (3, 4))
    if x.dim() == 3:
        return depthwise_conv2d(x.unsqueeze(0), weight, bias, stride, padding, dilation,
                                algorithm).squeeze(0)
    x, weight, bias = _autocast(x, weight, bias)
    spec, algo = plan_call(owner, x, weight, bias, stride, padding, dilation, algorithm)
    return algo.run(x, weight, bias, spec)


# fx symbolic tracing records the call as one node instead of tracing into shape checks.
torch.fx.wrap("depthwise_conv2d")
torch.fx.wrap("depthwise_separable_conv2d")


def depthwise_separable_conv2d(x, depthwise_weight, pointwise_weight, depthwise_bias=None,
                               pointwise_bias=None, stride=1, padding=0, dilation=1,
                               algorithm="auto"):
    """Depthwise k x k convolution followed by a 1x1 pointwise convolution (no norm/act).

    Args:
        x: (N, C, H, W). depthwise_weight: (C*m, 1, kh, kw). pointwise_weight: (K, C*m, 1, 1).
    Returns:
        (N, K, out_h, out_w).

    Example:
        >>> x = torch.randn(1, 4, 8, 8)
        >>> y = depthwise_separable_conv2d(x, torch.randn(4, 1, 3, 3), torch.randn(6, 4, 1, 1), padding=1)
        >>> y.shape
        torch.Size([1, 6, 8, 8])
    """
    y = depthwise_conv2d(x, depthwise_weight, depthwise_bias, stride, padding, dilation, algorithm)
    return F.conv2d(y, pointwise_weight, pointwise_bias)
