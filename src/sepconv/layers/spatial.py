"""Spatially separable convolution: k x 1 then 1 x k, as a sum of `rank` such pairs."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import pair, positive_int


class SpatiallySeparableConv2d(nn.Module):
    """Rank-r spatially separable convolution (Jaderberg et al. 2014): each output channel is
    a sum of `rank` terms, a vertical (kh x 1) filter over all inputs followed by a
    horizontal (1 x kw) filter:

        y[o] = sum_{t < rank} sum_c  h[o, t] (*) (v[o, t, c] (*) x[c])

    implemented as a (kh x 1) conv to out_channels*rank maps, then a grouped (1 x kw) conv
    summing each output's `rank` maps. A trained k x k kernel converts with
    :func:`sepconv.convert.decompose`.

    Parameters: out*rank*in*kh + out*rank*kw (+ out) against out*in*kh*kw.

    Example:
        >>> layer = SpatiallySeparableConv2d(8, 16, 3, padding=1, rank=2)
        >>> layer(torch.randn(1, 8, 10, 10)).shape
        torch.Size([1, 16, 10, 10])
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, rank=1,
                 bias=True, device=None, dtype=None):
        super().__init__()
        owner = type(self).__name__
        self.in_channels = positive_int(owner, "in_channels", in_channels)
        self.out_channels = positive_int(owner, "out_channels", out_channels)
        self.rank = positive_int(owner, "rank", rank)
        self.kernel_size = pair(owner, "kernel_size", kernel_size, minimum=1)
        self.stride = pair(owner, "stride", stride, minimum=1)
        self.padding = pair(owner, "padding", padding)
        kh, kw = self.kernel_size
        factory = {"device": device, "dtype": dtype}
        self.vertical = nn.Conv2d(in_channels, out_channels * rank, (kh, 1), (self.stride[0], 1),
                                  (self.padding[0], 0), bias=False, **factory)
        self.horizontal = nn.Conv2d(out_channels * rank, out_channels, (1, kw), (1, self.stride[1]),
                                    (0, self.padding[1]), groups=out_channels, bias=bias, **factory)

    def forward(self, x):
        return self.horizontal(self.vertical(x))

    def full_weight(self) -> torch.Tensor:
        """The equivalent (out, in, kh, kw) kernel: sum over rank of outer products."""
        kh, kw = self.kernel_size
        v = self.vertical.weight.view(self.out_channels, self.rank, self.in_channels, kh)
        h = self.horizontal.weight.view(self.out_channels, self.rank, kw)
        return torch.einsum("orci,orj->ocij", v, h)
