"""Python side of the native NHWC depthwise kernel: layout handling and autograd."""

from __future__ import annotations

import torch

from ..spec import ConvSpec
from . import load


class _DepthwiseNative(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, spec):
        mod = load("depthwise")
        y = mod.forward(x, weight, bias, spec.stride, spec.padding, spec.dilation, False, False)
        ctx.save_for_backward(x, weight)
        ctx.spec, ctx.has_bias = spec, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        spec, mod = ctx.spec, load("depthwise")
        dy = dy.contiguous(memory_format=torch.channels_last)
        args = (spec.stride, spec.padding, spec.dilation)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            (kh, kw), (ph, pw), (dh, dw_) = spec.kernel_size, spec.padding, spec.dilation
            flip_pad = (dh * (kh - 1) - ph, dw_ * (kw - 1) - pw)
            if spec.stride == (1, 1) and min(flip_pad) >= 0:
                # stride 1: the input gradient is the forward kernel on dy with the kernel
                # flipped and the complementary padding
                dx = mod.forward(dy, weight, None, (1, 1), flip_pad, spec.dilation, False, True)
            else:
                dx = mod.grad_input(dy, weight, list(x.shape), *args)
        want_db = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] or want_db:
            dw, db = mod.grad_weight(x, dy, *spec.kernel_size, *args, want_db)
            dw = dw.to(weight.dtype) if ctx.needs_input_grad[1] else None
            db = db.to(dy.dtype) if want_db else None
        return dx, dw, db, None


def run(x, weight, bias, spec: ConvSpec, relu: bool = False):
    """Depthwise convolution (depth multiplier 1) by the native kernel; output in x's format."""
    xl = x.contiguous(memory_format=torch.channels_last)
    if spec.requires_grad:
        if relu:
            raise ValueError("native depthwise: fused ReLU is inference-only.")
        y = _DepthwiseNative.apply(xl, weight, bias, spec)
    else:
        y = load("depthwise").forward(xl, weight, bias, spec.stride, spec.padding, spec.dilation, relu, False)
    return y if spec.layout == "nhwc" else y.contiguous()


def run_winograd_rows(x, weight, bias, spec: ConvSpec, relu: bool = False):
    """Depthwise 3x3 (stride 1, dilation 1, multiplier 1) by the native row-wise F(2,3)
    kernel, inference only; output in x's memory format."""
    return _winograd(x, weight, bias, spec, relu, tile=2, two_d=False)


def run_winograd_2d(m: int):
    """The runner of the native 2-D F(m x m, 3x3) kernel (m = 2 or 4): depthwise 3x3,
    stride 1, dilation 1, multiplier 1, inference only; output in x's memory format."""
    return lambda x, weight, bias, spec, relu=False: _winograd(x, weight, bias, spec, relu, m, two_d=True)


def _winograd(x, weight, bias, spec, relu, tile, two_d):
    from ..functional.winograd import matrices

    _, g, _ = matrices(tile, torch.float32, "cpu")
    w = weight[:, 0].float()
    # U = G g G^T per channel as (n, n, C), or G applied to each kernel row as (3, 4, C)
    u = (g @ w @ g.t() if two_d else w @ g.t()).permute(1, 2, 0).contiguous()
    xl = x.contiguous(memory_format=torch.channels_last)
    mod = load("depthwise")
    run = mod.winograd2d_forward if two_d else mod.winograd_rows_forward
    y = run(xl, u, bias, spec.padding, relu)
    return y if spec.layout == "nhwc" else y.contiguous()
