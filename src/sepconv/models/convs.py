"""Convolution factories of the zoo's CNNs: standard, and versatile (Wang et al., NeurIPS 2018):
every 3x3 convolution becomes a spatial VersatileConv2d (3x3 + 1x1 sub-filters, half the
primary filters) and every 1x1 convolution a channel VersatileConv2d with four channel windows
(a quarter of the primary filters)."""

from __future__ import annotations

from torch import nn

from ..layers import VersatileConv2d

CHANNEL_WINDOWS = 4  # channel sub-filters per 1x1 primary filter


def standard_conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)


def versatile_conv(cin, cout, k, stride=1):
    """3x3 -> spatial versatile (s = 2); 1x1 -> channel versatile with 4 windows of 5/8 of the
    inputs at strides of 1/8 (delta = 3g, g = C_in / 8), when the sizes allow it."""
    if k == 1:
        g = cin // 8
        if g and cin % 8 == 0 and cout % CHANNEL_WINDOWS == 0:
            return VersatileConv2d(cin, cout, 1, stride, 0, bias=False, delta=3 * g, g=g)
        return standard_conv(cin, cout, 1, stride)
    if cout % ((k + 1) // 2) == 0:
        return VersatileConv2d(cin, cout, k, stride, k // 2, bias=False)
    return standard_conv(cin, cout, k, stride)
