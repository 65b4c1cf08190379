"""Device-agnostic PyTorch implementations of depthwise convolution.

``reference`` is ``F.conv2d`` with ``groups=C``; ``direct`` accumulates the kh*kw shifted,
strided views of the padded input, one multiply-add per tap over the whole tensor. Both are
differentiable through autograd and run on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..spec import ConvSpec


def memory_format_of(spec: ConvSpec) -> torch.memory_format:
    return torch.channels_last if spec.layout == "nhwc" else torch.contiguous_format


def reference(x, weight, bias, spec: ConvSpec):
    return F.conv2d(x, weight, bias, spec.stride, spec.padding, spec.dilation, groups=spec.channels)


def direct(x, weight, bias, spec: ConvSpec):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = spec.kernel_size, spec.stride, spec.padding, spec.dilation
    oh, ow = spec.out_size
    if spec.depth_multiplier > 1:
        x = x.repeat_interleave(spec.depth_multiplier, dim=1)
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    taps = weight.reshape(spec.out_channels, kh * kw).t().reshape(kh * kw, 1, -1, 1, 1)
    out = None
    for i in range(kh):
        for j in range(kw):
            view = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            term = view * taps[i * kw + j]
            out = term if out is None else out + term
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.contiguous(memory_format=memory_format_of(spec))
