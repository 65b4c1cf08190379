"""Versatile convolution module (Wang et al., NeurIPS 2018)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import fail, pair, positive_int
from ..functional.versatile import versatile_conv2d


class VersatileConv2d(nn.Module):
    """A convolution whose `out_channels` come from fewer primary filters: each k x k primary
    filter yields s = (k+1)/2 nested spatial sub-filters (if `spatial`) times n_c = delta/g + 1
    channel sub-filters (if `delta` > 0), sharing its weights and its multiplications.

    Parameters: P * C_in * k * k (+ out_channels bias) with P = out_channels / (s * n_c),
    against out_channels * C_in * k * k for nn.Conv2d.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H_out, W_out), as nn.Conv2d.

    Example:
        >>> layer = VersatileConv2d(16, 32, 3, padding=1)   # 16 primary filters, 3x3 and 1x1 each
        >>> sum(p.numel() for p in layer.parameters())      # 16*16*9 + 32 (vs 32*16*9 + 32)
        2336
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 spatial=True, delta=0, g=1, device=None, dtype=None):
        super().__init__()
        owner = type(self).__name__
        self.in_channels = positive_int(owner, "in_channels", in_channels)
        self.out_channels = positive_int(owner, "out_channels", out_channels)
        kh, kw = pair(owner, "kernel_size", kernel_size, minimum=1)
        if kh != kw:
            fail(owner, "`kernel_size` must be square (nested centre sub-filters).", f"kernel_size={kernel_size!r}")
        if spatial and kh % 2 == 0:
            fail(owner, "`kernel_size` must be odd when `spatial=True` (sub-filters share a centre).",
                 f"kernel_size={kernel_size!r}")
        self.kernel_size, self.spatial = kh, bool(spatial)
        self.stride = pair(owner, "stride", stride, minimum=1)
        self.padding = pair(owner, "padding", padding)
        self.g = positive_int(owner, "g", g)
        if not isinstance(delta, int) or delta < 0 or delta >= in_channels:
            fail(owner, "`delta` must be an int with 0 <= delta < in_channels.", f"delta={delta!r}, in_channels={in_channels}")
        if in_channels % self.g or delta % self.g:
            fail(owner, "`g` must divide both `in_channels` and `delta`.", f"in_channels={in_channels}, delta={delta}, g={g}")
        self.delta = delta
        s = (kh + 1) // 2 if spatial else 1
        n_c = delta // self.g + 1
        if out_channels % (s * n_c):
            fail(owner, f"`out_channels` must be divisible by the {s * n_c} sub-filters per primary filter "
                 f"({s} spatial x {n_c} channel).", f"out_channels={out_channels}")
        self.secondary = s * n_c
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels // self.secondary, in_channels, kh, kh, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * self.kernel_size ** 2)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        if isinstance(x, torch.Tensor) and (x.dim() != 4 or x.shape[1] != self.in_channels):
            fail(type(self).__name__, f"`input` must be (N, {self.in_channels}, H, W).",
                 f"input.shape={tuple(x.shape)}")
        return versatile_conv2d(x, self.weight, self.bias, self.stride, self.padding,
                                self.spatial, self.delta, self.g)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1):
            s += f", stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if not self.spatial:
            s += ", spatial=False"
        if self.delta:
            s += f", delta={self.delta}, g={self.g}"
        return s + ("" if self.bias is not None else ", bias=False")
