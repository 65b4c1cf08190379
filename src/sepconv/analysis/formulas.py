"""One registry from aten op to its multiply-accumulate count (MACs; FLOPs = 2 x MACs).

Ops that do no multiply-accumulate (activations, normalisation in eval, pooling, additions,
copies) are registered explicitly with zero MACs, so an op missing from the registry is
reported as unsupported rather than silently counted as zero. View ops move no bytes.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..functional.versatile import versatile_op

aten = torch.ops.aten

FORMULAS: dict = {}
VIEWS: set = set()


def register(*ops):
    def deco(fn: Callable):
        for op in ops:
            FORMULAS[op] = fn
        return fn
    return deco


def _shape(t):
    return tuple(t.shape)


def conv_macs(x_shape, w_shape, out_shape, transposed=False) -> int:
    """MACs of a (grouped) convolution: every output element takes (C_in / groups) * kh * kw
    multiply-adds; w_shape = (C_out, C_in / groups, kh, kw). For a transposed convolution
    every input element is scattered through the kernel instead."""
    per = math.prod(w_shape[1:])
    if transposed:  # weight (C_in, C_out/groups, kh, kw)
        return math.prod(x_shape) * math.prod(w_shape[1:])
    return math.prod(out_shape) * per


@register(aten.convolution.default, aten._convolution.default)
def _conv(args, out):
    return conv_macs(_shape(args[0]), _shape(args[1]), _shape(out), bool(args[6]))


@register(versatile_op())
def _versatile(args, out):
    # the layer whole (inference, traced): each channel segment's product once per nested
    # sub-filter, P * C_in * (k^2 + (k-2)^2 + ... + 1) per output position, as its kernels compute
    x, weight, spatial = args[0], args[1], args[7]
    p, c, k, _ = weight.shape
    taps = sum((k - 2 * j) ** 2 for j in range((k + 1) // 2)) if spatial else k * k
    return out.shape[0] * out.shape[2] * out.shape[3] * p * c * taps


@register(aten.convolution_backward.default)
def _conv_backward(args, out):
    grad_out, x, w = args[0], args[1], args[2]
    mask = args[-1]
    fwd = conv_macs(_shape(x), _shape(w), _shape(grad_out), bool(args[6]))
    return fwd * (int(bool(mask[0])) + int(bool(mask[1])))  # grad_input and grad_weight


@register(aten.mm.default)
def _mm(args, out):
    (n, k), (_, m) = _shape(args[0]), _shape(args[1])
    return n * k * m


@register(aten.addmm.default)
def _addmm(args, out):
    (n, k), (_, m) = _shape(args[1]), _shape(args[2])
    return n * k * m


@register(aten.bmm.default)
def _bmm(args, out):
    (b, n, k), (_, _, m) = _shape(args[0]), _shape(args[1])
    return b * n * k * m


@register(aten.baddbmm.default)
def _baddbmm(args, out):
    (b, n, k), (_, _, m) = _shape(args[1]), _shape(args[2])
    return b * n * k * m


_ZERO = [
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "threshold_backward", "gelu", "silu",
    "silu_", "sigmoid", "tanh", "hardswish", "hardswish_", "hardsigmoid", "leaky_relu", "clamp",
    "clamp_min", "add", "add_", "sub", "mul", "mul_", "div", "div_", "neg", "sqrt", "rsqrt",
    "pow", "exp", "log", "abs", "maximum", "minimum", "where",
    "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
    "native_batch_norm_backward", "native_layer_norm", "native_group_norm",
    "avg_pool2d", "max_pool2d_with_indices", "adaptive_avg_pool2d", "_adaptive_avg_pool2d",
    "mean", "sum", "amax", "max", "_softmax", "_log_softmax", "nll_loss_forward",
    "copy_", "clone", "_to_copy", "cat", "stack", "constant_pad_nd", "fill_", "zero_",
    "zeros_like", "ones_like", "empty_like", "empty", "empty_strided", "new_empty", "new_zeros",
    "full", "zeros", "ones", "native_dropout", "bernoulli_", "repeat", "repeat_interleave",
    "index", "gather", "scatter", "flip", "roll", "reflection_pad2d", "replication_pad2d",
    "contiguous", "addcmul_", "addcdiv_", "lerp_", "_foreach_add_", "_foreach_mul_",
]
_VIEW = [
    "view", "_unsafe_view", "reshape", "t", "permute", "transpose", "expand", "as_strided", "as_strided_",
    "slice", "select", "unsqueeze", "squeeze", "alias", "detach", "unfold", "flatten",
    "split", "split_with_sizes", "chunk", "narrow", "unbind", "lift_fresh",
]


def _zero(args, out):
    return 0


for _name in _ZERO + _VIEW:
    _packet = getattr(aten, _name, None)
    if _packet is None:
        continue
    for _overload in _packet.overloads():
        op = getattr(_packet, _overload)
        FORMULAS.setdefault(op, _zero)
        if _name in _VIEW:
            VIEWS.add(op)


def kind_of(op, args) -> str:
    """Layer type of one counted op, for MobileNet's Table 2 breakdown."""
    if op in (aten.convolution.default, aten._convolution.default):
        w = args[1]
        groups = args[8]   # (the same position in convolution and _convolution)
        kh, kw = w.shape[2], w.shape[3]
        if groups > 1 and w.shape[1] == 1:
            return f"depthwise conv {kh}x{kw}"
        return f"conv {kh}x{kw}" + (" (grouped)" if groups > 1 else "")
    if op in (aten.mm.default, aten.addmm.default):
        return "fully connected"
    if op in (aten.bmm.default, aten.baddbmm.default):
        return "batched matmul"
    return "other"
