"""Depthwise and depthwise-separable convolution as functions."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .. import algorithms
from .._validation import tensor
from ..spec import depthwise_spec


def depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, algorithm="auto"):
    """Depthwise 2-D convolution: each input channel convolved with its own filters.

    Args:
        x: (N, C, H, W) or unbatched (C, H, W); NCHW or channels_last.
        weight: (C * depth_multiplier, 1, kh, kw), as ``nn.Conv2d(C, C*m, k, groups=C).weight``.
        bias: (C * depth_multiplier,) or None.
        stride, padding, dilation: as ``F.conv2d``; padding also ``"same"`` or ``"valid"``.
        algorithm: ``"auto"`` or a name from ``sepconv.algorithms.list_algorithms()``.

    Returns:
        (N, C * depth_multiplier, out_h, out_w), in the memory format of `x`.

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
    spec, algo = plan_call(owner, x, weight, bias, stride, padding, dilation, algorithm)
    return algo.run(x, weight, bias, spec)


def plan_call(owner, x, weight, bias, stride, padding, dilation, algorithm):
    """(spec, algorithm) for a 4-D depthwise call: validated and resolved once per distinct
    call signature, then read from a cache."""
    key = _dispatch_key(x, weight, bias, stride, padding, dilation, algorithm)
    hit = _DISPATCH.get(key) if key is not None else None
    if hit is not None:
        return hit
    if torch.jit.is_tracing():
        with warnings.catch_warnings():
            # Under torch.jit.trace the shape checks read traced sizes: they are constants of
            # the trace by design, so the tracer's warning about them is noise.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            spec = depthwise_spec(owner, x, weight, bias, stride, padding, dilation)
    else:  # (catch_warnings would also break a torch.compile graph)
        spec = depthwise_spec(owner, x, weight, bias, stride, padding, dilation)
    algo = algorithms.resolve(algorithm, spec, owner, x)
    if key is not None:
        if len(_DISPATCH) > 4096:
            _DISPATCH.clear()
        _DISPATCH[key] = (spec, algo)
    return spec, algo


# Validated calls: (spec, algorithm) by everything that determines them, so a repeated call
# skips validation and plan lookup (about 20 us of Python per call, as long as a small
# layer's whole run). Cleared with the tuner's plans.
_DISPATCH: dict = {}


def _dispatch_key(x, weight, bias, stride, padding, dilation, algorithm):
    if (not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor))
            or algorithms._FORCED or algorithms._tracing(x)):
        return None
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))
    key = (algorithm, x.shape, x.stride(), x.dtype, x.device, weight.shape, weight.dtype,
           weight.device, None if bias is None else (bias.shape, bias.dtype, bias.device),
           stride, padding, dilation, grad, torch.get_num_threads())
    try:
        hash(key)
    except TypeError:  # list arguments: validate every time
        return None
    return key


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
