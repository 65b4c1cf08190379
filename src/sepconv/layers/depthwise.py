"""Depthwise and depthwise-separable convolution modules (drop-in for ``nn.Conv2d``)."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .. import algorithms
from .._validation import choice, fail, pair, positive_int
from ..functional.depthwise import depthwise_conv2d
from ..spec import resolve_padding

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

# torch.fx records calls made from this module as one graph node rather than tracing the
# shape checks inside (fx.wrap patches the name in the globals of the module that calls it).
torch.fx.wrap("depthwise_conv2d")


class DepthwiseConv2d(nn.Module):
    """Depthwise convolution: ``nn.Conv2d(C, C*depth_multiplier, k, groups=C)`` with a choice of
    algorithm. Parameters and state_dict keys match that ``nn.Conv2d`` exactly.

    Shapes:
        input (N, C, H, W) or (C, H, W) -> output (N, C*depth_multiplier, H_out, W_out), with
        H_out = (H + 2*padding - dilation*(k-1) - 1) // stride + 1; memory format follows input.

    Example:
        >>> layer = DepthwiseConv2d(32, 3, padding=1)
        >>> layer(torch.randn(1, 32, 56, 56)).shape
        torch.Size([1, 32, 56, 56])
    """

    def __init__(self, in_channels, kernel_size, stride=1, padding=0, dilation=1,
                 depth_multiplier=1, bias=True, padding_mode="zeros", algorithm="auto",
                 device=None, dtype=None):
        super().__init__()
        owner = type(self).__name__
        self.in_channels = positive_int(owner, "in_channels", in_channels)
        self.depth_multiplier = positive_int(owner, "depth_multiplier", depth_multiplier)
        self.out_channels = in_channels * depth_multiplier
        self.kernel_size = pair(owner, "kernel_size", kernel_size, minimum=1)
        self.stride = pair(owner, "stride", stride, minimum=1)
        self.dilation = pair(owner, "dilation", dilation, minimum=1)
        self.padding = padding if isinstance(padding, str) else pair(owner, "padding", padding)
        self._pad = resolve_padding(owner, padding, self.kernel_size, self.stride, self.dilation)
        self.padding_mode = choice(owner, "padding_mode", padding_mode, PADDING_MODES)
        self.algorithm = algorithms.check_name(owner, algorithm)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.out_channels, 1, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(self.out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as nn.Conv2d, so swapping the layer changes no training recipe.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.kernel_size[0] * self.kernel_size[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def _wrong_channels(self, x) -> bool:
        if not torch.jit.is_tracing():
            return x.shape[-3] != self.in_channels
        with warnings.catch_warnings():
            # under torch.jit.trace sizes are constants of the trace by design
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return bool(x.shape[-3] != self.in_channels)

    def forward(self, x):
        # The function cannot tell a wrong channel count from a depth multiplier; the layer can.
        # (Under fx symbolic tracing x is a Proxy with no sizes: the check runs at call time.)
        if isinstance(x, torch.Tensor) and x.dim() in (3, 4) and self._wrong_channels(x):
            fail(type(self).__name__, f"`input` must have {self.in_channels} channels "
                 "(dimension -3).", f"input.shape={tuple(x.shape)}")
        if self.padding_mode != "zeros" and any(self._pad):
            ph, pw = self._pad
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
            return depthwise_conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation,
                                    self.algorithm)
        return depthwise_conv2d(x, self.weight, self.bias, self.stride, self._pad, self.dilation,
                                self.algorithm)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, kernel_size={self.kernel_size}"
        defaults = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), depth_multiplier=1,
                        padding_mode="zeros", algorithm="auto")
        for name, default in defaults.items():
            value = getattr(self, name)
            if value != default:
                s += f", {name}={value!r}"
        if self.bias is None:
            s += ", bias=False"
        return s


class DepthwiseSeparableConv2d(nn.Module):
    """Depthwise k x k convolution, optional norm/activation, then a 1x1 pointwise convolution
    and optional norm/activation (MobileNetV1, Xception).

    ``norm_layer`` (e.g. ``nn.BatchNorm2d``) is called with the channel count and ``act_layer``
    (e.g. ``nn.ReLU``) with no argument. ``mid_norm``/``mid_act`` place them after the depthwise
    step too. ``bias`` adds one bias after the pointwise step (as Keras' SeparableConv2D); the
    depthwise step has none.

    Shapes:
        (N, in_channels, H, W) -> (N, out_channels, H_out, W_out), H_out as in nn.Conv2d.

    Example:
        >>> mobilenet_block = DepthwiseSeparableConv2d(32, 64, 3, padding=1,
        ...     norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU)      # DW+BN+ReLU+PW+BN+ReLU
        >>> xception_block = DepthwiseSeparableConv2d(32, 64, 3, padding=1,
        ...     norm_layer=nn.BatchNorm2d, mid_norm=False, mid_act=False)  # DW+PW+BN
        >>> sum(p.numel() for p in DepthwiseSeparableConv2d(16, 32, 3, padding=1).parameters())
        656
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 depth_multiplier=1, bias=False, norm_layer=None, act_layer=None, mid_norm=True,
                 mid_act=True, padding_mode="zeros", algorithm="auto", device=None, dtype=None):
        super().__init__()
        owner = type(self).__name__
        positive_int(owner, "out_channels", out_channels)
        for name, layer in (("norm_layer", norm_layer), ("act_layer", act_layer)):
            if layer is not None and not callable(layer):
                fail(owner, f"`{name}` must be a callable returning an nn.Module, or None.",
                     f"{name}={layer!r}", TypeError)
        factory = {"device": device, "dtype": dtype}
        self.depthwise = DepthwiseConv2d(in_channels, kernel_size, stride, padding, dilation,
                                         depth_multiplier, bias=False, padding_mode=padding_mode,
                                         algorithm=algorithm, **factory)
        mid = self.depthwise.out_channels
        self.dw_norm = norm_layer(mid, **factory) if norm_layer and mid_norm else nn.Identity()
        self.dw_act = act_layer() if act_layer and mid_act else nn.Identity()
        self.pointwise = nn.Conv2d(mid, out_channels, 1, bias=bias, **factory)
        self.pw_norm = norm_layer(out_channels, **factory) if norm_layer else nn.Identity()
        self.pw_act = act_layer() if act_layer else nn.Identity()
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x):
        x = self.dw_act(self.dw_norm(self.depthwise(x)))
        return self.pw_act(self.pw_norm(self.pointwise(x)))
