"""Python side of the native NHWC depthwise kernels: layout handling and transformed filters
(autograd is in the C++ source)."""

from __future__ import annotations

import torch

from ..spec import ConvSpec
from . import load


def run(x, weight, bias, spec: ConvSpec, relu: bool = False):
    """Depthwise convolution (depth multiplier 1) by the native kernel; output in x's format."""
    xl, mod = x.contiguous(memory_format=torch.channels_last), load("depthwise")
    if spec.requires_grad:
        if relu:
            raise ValueError("native depthwise: fused ReLU is inference-only.")
        y = mod.forward_train(xl, weight, bias, spec.stride, spec.padding, spec.dilation)
    else:
        y = mod.forward(xl, weight, bias, spec.stride, spec.padding, spec.dilation, relu, False)
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
