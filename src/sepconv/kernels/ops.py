"""Python side of the native ops: their fake (shape) kernels for tracing, and the runners the
algorithm registry calls (layout handling, transformed Winograd filters)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..spec import ConvSpec, conv_out_size
from . import load


class Act(NamedTuple):
    """An activation a native kernel applies to its finished outputs: ``kind`` one of
    :data:`ACT_KINDS`; ``lo``/``hi`` the bounds of "clamp" (ReLU6 is clamp 0..6)."""

    kind: str = "none"
    lo: float = 0.0
    hi: float = 0.0


ACT_KINDS = ("none", "relu", "clamp", "silu", "hardswish", "gelu", "gelu_tanh", "sigmoid")
NO_ACT = Act()


def _out_like(x, oh, ow):
    return torch.empty((x.shape[0], x.shape[1], oh, ow), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def register_fakes() -> None:
    """Shape functions of the extension's ops, for FakeTensor tracing (torch.compile, export).
    Called once by :func:`sepconv.kernels.load` after the extension registered the ops."""

    @torch.library.register_fake("sepconv::depthwise")
    def _(x, weight, bias, stride, padding, dilation, act="none", lo=0.0, hi=0.0):
        return _out_like(x, *conv_out_size(x.shape[2:], weight.shape[2:], stride, padding, dilation))

    @torch.library.register_fake("sepconv::depthwise_backward")
    def _(grad_output, x, weight, stride, padding, dilation, output_mask):
        dx = torch.empty_like(x, memory_format=torch.channels_last) if output_mask[0] else None
        dw = torch.empty_like(weight) if output_mask[1] else None
        db = grad_output.new_empty(x.shape[1]) if output_mask[2] else None
        return dx, dw, db

    @torch.library.register_fake("sepconv::winograd")
    def _(x, u, bias, padding, two_d, act="none", lo=0.0, hi=0.0):
        return _out_like(x, *conv_out_size(x.shape[2:], (3, 3), (1, 1), padding, (1, 1)))

    # FlopCounterMode counts the ops as the convolutions they compute: FLOPs = 2 x MACs, one
    # multiply-add per output and tap (Winograd: the direct count, as for any algorithm).
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.sepconv.depthwise)
    def _(x_shape, w_shape, *args, out_shape=None, **kwargs):
        return 2 * math.prod(out_shape) * w_shape[2] * w_shape[3]

    @register_flop_formula(torch.ops.sepconv.depthwise_backward)
    def _(dy_shape, x_shape, w_shape, stride, padding, dilation, mask, *args, out_shape=None, **kwargs):
        return 2 * math.prod(dy_shape) * w_shape[2] * w_shape[3] * (int(mask[0]) + int(mask[1]))

    @register_flop_formula(torch.ops.sepconv.winograd)
    def _(x_shape, u_shape, *args, out_shape=None, **kwargs):
        return 2 * math.prod(out_shape) * 9


def _watched() -> bool:
    """True when something must see the op go through the dispatcher: a compiler or tracer,
    or a dispatch mode (FlopCounterMode, FakeTensorMode, ...). Otherwise eager calls skip it
    (the profiler still sees them: the kernels record themselves)."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._len_torch_dispatch_stack() > 0)


def run(x, weight, bias, spec: ConvSpec, act: Act = NO_ACT):
    """Depthwise convolution (depth multiplier 1) by the native kernel, bias and `act` fused;
    output in x's memory format."""
    call = torch.ops.sepconv.depthwise if _watched() else load().depthwise
    y = call(x, weight, bias, spec.stride, spec.padding, spec.dilation, *act)
    return y if spec.layout == "nhwc" else y.contiguous()
