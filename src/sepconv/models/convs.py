"""Convolution factories of the zoo's CNNs: standard, and versatile (Wang et al., NeurIPS 2018)."""

from __future__ import annotations

from torch import nn

from ..layers import VersatileConv2d


def standard_conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)


def spatial_versatile_conv(cin, cout, k, stride=1):
    """k x k -> spatial versatile: (k+1)/2 nested sub-filters per primary filter (3x3: 3x3 + 1x1,
    half the filters). 1x1 stays standard."""
    if k > 1 and cout % ((k + 1) // 2) == 0:
        return VersatileConv2d(cin, cout, k, stride, k // 2, bias=False)
    return standard_conv(cin, cout, k, stride)


def versatile_v2_conv(cin, cout, k, stride=1):
    """The paper's "versatile v2": spatial sub-filters on k x k (k > 1) and two channel windows
    on every convolution (n = 2: windows of 7/8 of the inputs, delta = g = C_in/8), so a 3x3
    keeps 1/4 of its filters and a 1x1 half of them."""
    s = (k + 1) // 2
    if cin % 8 == 0 and cout % (2 * s) == 0:
        return VersatileConv2d(cin, cout, k, stride, k // 2, bias=False, spatial=k > 1, delta=cin // 8, g=cin // 8)
    return standard_conv(cin, cout, k, stride)
