"""Python side of the native NHWC depthwise kernels: layout handling, transformed filters, and
the torch.library ops that torch.compile captures (eager autograd is in the C++ source)."""

from __future__ import annotations

from typing import Optional

import torch

from ..spec import ConvSpec, conv_out_size
from . import load


def run(x, weight, bias, spec: ConvSpec, relu: bool = False):
    """Depthwise convolution (depth multiplier 1) by the native kernel; output in x's format."""
    if spec.requires_grad and relu:
        raise ValueError("native depthwise: fused ReLU is inference-only.")
    xl = x.contiguous(memory_format=torch.channels_last)
    args = (spec.stride, spec.padding, spec.dilation)   # the extension takes tuples as they are
    if torch.compiler.is_compiling():
        y = depthwise_op(xl, weight, bias, *map(list, args), relu)
    elif spec.requires_grad:
        y = load("depthwise").forward_train(xl, weight, bias, *args)
    else:
        y = load("depthwise").forward(xl, weight, bias, *args, relu, False)
    return y if spec.layout == "nhwc" else y.contiguous()


# torch.compile cannot look into the extension (a plain call breaks its graph), so under
# compilation the kernel runs as a torch.library op, with a shape function and an autograd
# formula over the same C++ entry points. Eager calls skip the dispatcher (a few us a call).
@torch.library.custom_op("sepconv::depthwise", mutates_args=())
def depthwise_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: list[int],
                 padding: list[int], dilation: list[int], relu: bool) -> torch.Tensor:
    """Native NHWC depthwise forward: x (N, C, H, W) channels_last, weight (C, 1, kh, kw),
    bias (C,) or None -> (N, C, OH, OW) channels_last, ReLU applied if `relu`."""
    return load("depthwise").forward(x, weight, bias, stride, padding, dilation, relu, False)


@depthwise_op.register_fake
def _(x, weight, bias, stride, padding, dilation, relu):
    oh, ow = conv_out_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    return x.new_empty((x.shape[0], x.shape[1], oh, ow)).contiguous(memory_format=torch.channels_last)


@torch.library.custom_op("sepconv::depthwise_backward", mutates_args=())
def depthwise_backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: list[int],
                          padding: list[int], dilation: list[int], want: list[bool]) -> list[torch.Tensor]:
    """[dx, dw, db] of depthwise_op, each an empty (0,) tensor where `want` says not needed."""
    grads = load("depthwise").backward(x, dy, weight, stride, padding, dilation, *want)
    return [x.new_empty(0) if g is None else g for g in grads]


@depthwise_backward_op.register_fake
def _(dy, x, weight, stride, padding, dilation, want):
    return [dy.new_empty(x.shape).contiguous(memory_format=torch.channels_last) if want[0] else x.new_empty(0),
            torch.empty_like(weight, memory_format=torch.contiguous_format) if want[1] else x.new_empty(0),
            dy.new_empty(x.shape[1]) if want[2] else x.new_empty(0)]


def _setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(x, weight)
    ctx.args, ctx.has_bias = (stride, padding, dilation), bias is not None


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    want = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    dx, dw, db = depthwise_backward_op(dy, x, weight, *ctx.args, want)
    return (dx if want[0] else None, dw if want[1] else None, db if want[2] else None, None, None, None, None)


depthwise_op.register_autograd(_backward, setup_context=_setup)


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
