"""What every sepconv layer shares with ``nn.Conv2d``: its attributes (``in_channels,
out_channels, kernel_size, stride, padding, dilation, padding_mode`` as tuples and strings),
argument validation with sepconv's messages, ``reset_parameters`` and an ``extra_repr`` that
prints only non-default arguments, as torch/nn/modules/conv.py does."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import choice, fail, pair, positive_int
from ..spec import resolve_padding, same_padding

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def conv_arguments(owner: str, in_channels, out_channels, kernel_size, stride, padding, dilation,
                   padding_mode) -> dict:
    """The validated arguments of a convolution-like layer, as nn.Conv2d stores them."""
    kernel_size = pair(owner, "kernel_size", kernel_size, minimum=1)
    stride = pair(owner, "stride", stride, minimum=1)
    dilation = pair(owner, "dilation", dilation, minimum=1)
    # "same" with an odd total padding (an even kernel) is asymmetric, as nn.Conv2d pads it:
    # the layer pads its input explicitly then (the functions take symmetric padding only).
    explicit = None
    if padding == "same" and stride == (1, 1):
        left, right, top, bottom = same_padding(kernel_size, dilation)
        if (left, top) != (right, bottom):
            explicit = (left, right, top, bottom)
    return dict(
        in_channels=positive_int(owner, "in_channels", in_channels),
        out_channels=positive_int(owner, "out_channels", out_channels),
        kernel_size=kernel_size, stride=stride, dilation=dilation,
        padding=padding if isinstance(padding, str) else pair(owner, "padding", padding),
        pad=(0, 0) if explicit else resolve_padding(owner, padding, kernel_size, stride, dilation),
        explicit_pad=explicit,
        padding_mode=choice(owner, "padding_mode", padding_mode, PADDING_MODES))


class ConvLayer:
    """Mixin of the layers: nn.Conv2d's attributes, the input padding of non-zero padding
    modes, reset_parameters and extra_repr. ``_pad`` is the symmetric (pad_h, pad_w) that
    ``padding`` (an int, a pair, "same" or "valid") resolves to; ``_explicit_pad`` is F.pad's
    (left, right, top, bottom) for an asymmetric "same" (then ``_pad`` is (0, 0)), else None."""

    _repr_defaults = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), padding_mode="zeros")

    def _set_conv_arguments(self, args: dict) -> None:
        self._pad, self._explicit_pad = args.pop("pad"), args.pop("explicit_pad")
        for name, value in args.items():
            setattr(self, name, value)

    def _padded(self, x):
        """(x, padding for the convolution): for a non-zero padding mode or an asymmetric
        "same", x padded here and 0."""
        if self._explicit_pad is not None:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            return F.pad(x, self._explicit_pad, mode=mode), (0, 0)
        if self.padding_mode != "zeros" and any(self._pad):
            ph, pw = self._pad
            return F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode), (0, 0)
        return x, self._pad

    def _check_input(self, x) -> None:
        # (under fx symbolic tracing x is a Proxy with no sizes: the check runs at call time)
        if not isinstance(x, torch.Tensor):
            return
        if x.dim() not in (3, 4):
            fail(type(self).__name__, "`input` must be 3-D or 4-D.", f"input.shape={tuple(x.shape)}")
        if x.shape[-3] != self.in_channels:
            fail(type(self).__name__, f"`input` must have {self.in_channels} channels (dimension -3).",
                 f"input.shape={tuple(x.shape)}")

    def reset_parameters(self) -> None:
        """The initialisation of nn.Conv2d for the layer's own ``weight`` and ``bias``; child
        modules reset themselves."""
        weight, bias = getattr(self, "weight", None), getattr(self, "bias", None)
        if isinstance(weight, nn.Parameter):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            if isinstance(bias, nn.Parameter):
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                nn.init.uniform_(bias, -bound, bound)
        for child in self.children():
            if hasattr(child, "reset_parameters"):
                child.reset_parameters()

    def _has_bias(self) -> bool:
        return getattr(self, "bias", None) is not None

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        for name, default in self._repr_defaults.items():
            value = getattr(self, name)
            if value != default and not (name == "padding" and value == "valid"):
                s += f", {name}={value!r}"
        if not self._has_bias():
            s += ", bias=False"
        return s
