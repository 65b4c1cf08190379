"""Spatially separable convolution: k x 1 then 1 x k, as a sum of `rank` such pairs."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import positive_int
from .base import ConvLayer, conv_arguments


class SpatiallySeparableConv2d(ConvLayer, nn.Module):
    """Rank-r spatially separable convolution (Jaderberg et al. 2014): each output channel is
    a sum of `rank` terms, a vertical (kh x 1) filter over all inputs followed by a
    horizontal (1 x kw) filter:

        y[o] = sum_{t < rank} sum_c  h[o, t] (*) (v[o, t, c] (*) x[c])

    implemented as a (kh x 1) conv to out_channels*rank maps, then a grouped (1 x kw) conv
    summing each output's `rank` maps. A trained k x k kernel converts with
    :func:`sepconv.convert.decompose`. It has nn.Conv2d's arguments and attributes.

    Parameters: out*rank*in*kh + out*rank*kw (+ out) against out*in*kh*kw.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H_out, W_out), as nn.Conv2d.

    Example:
        >>> layer = SpatiallySeparableConv2d(8, 16, 3, padding=1, rank=2)
        >>> layer(torch.randn(1, 8, 10, 10)).shape
        torch.Size([1, 16, 10, 10])
    """

    _repr_defaults = dict(ConvLayer._repr_defaults, rank=1)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, *, rank=1):
        super().__init__()
        owner = type(self).__name__
        self._set_conv_arguments(conv_arguments(owner, in_channels, out_channels, kernel_size, stride, padding,
                                                dilation, padding_mode))
        self.rank = positive_int(owner, "rank", rank)
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = self.kernel_size, self.stride, self.dilation, self._pad
        factory = {"device": device, "dtype": dtype}
        self.vertical = nn.Conv2d(in_channels, out_channels * rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1),
                                  bias=False, **factory)
        self.horizontal = nn.Conv2d(out_channels * rank, out_channels, (1, kw), (1, sw), (0, pw), (1, dw),
                                    groups=out_channels, bias=bias, **factory)

    def _has_bias(self) -> bool:
        return self.horizontal.bias is not None

    def forward(self, x):
        self._check_input(x)
        if self.padding_mode == "zeros":   # the two convolutions pad, unless "same" is asymmetric
            x, _ = self._padded(x)
            return self.horizontal(self.vertical(x))
        x, _ = self._padded(x)
        v, h = self.vertical, self.horizontal
        y = nn.functional.conv2d(x, v.weight, None, v.stride, 0, v.dilation)
        return nn.functional.conv2d(y, h.weight, h.bias, h.stride, 0, h.dilation, h.groups)

    def full_weight(self) -> torch.Tensor:
        """The equivalent (out, in, kh, kw) kernel: sum over rank of outer products."""
        kh, kw = self.kernel_size
        v = self.vertical.weight.view(self.out_channels, self.rank, self.in_channels, kh)
        h = self.horizontal.weight.view(self.out_channels, self.rank, kw)
        return torch.einsum("orci,orj->ocij", v, h)
