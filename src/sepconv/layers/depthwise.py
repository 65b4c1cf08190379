"""Depthwise and depthwise-separable convolution modules (drop-in for ``nn.Conv2d``)."""

from __future__ import annotations

import torch
from torch import nn

from .. import algorithms
from .._validation import fail, positive_int
from ..functional.depthwise import depthwise_conv2d
from .base import ConvLayer, conv_arguments

# torch.fx records calls made from this module as one graph node rather than tracing the
# shape checks inside (fx.wrap patches the name in the globals of the module that calls it).
torch.fx.wrap("depthwise_conv2d")


class DepthwiseConv2d(ConvLayer, nn.Conv2d):
    """Depthwise convolution: an ``nn.Conv2d(in_channels, out_channels, kernel_size,
    groups=in_channels)`` (it is one: isinstance, attributes, state_dict and repr are those of
    nn.Conv2d) with a choice of algorithm. ``out_channels`` is a multiple of ``in_channels``:
    the depth multiplier.

    Shapes:
        input (N, C, H, W) or (C, H, W) -> output (N, out_channels, H_out, W_out), with
        H_out = (H + 2*padding - dilation*(k-1) - 1) // stride + 1; memory format follows input.

    Example:
        >>> layer = DepthwiseConv2d(32, 32, 3, padding=1)
        >>> layer(torch.randn(1, 32, 56, 56)).shape
        torch.Size([1, 32, 56, 56])
        >>> isinstance(layer, nn.Conv2d), layer.groups
        (True, 32)
    """

    _repr_defaults = dict(ConvLayer._repr_defaults, algorithm="auto")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, *, algorithm="auto"):
        owner = type(self).__name__
        args = conv_arguments(owner, in_channels, out_channels, kernel_size, stride, padding, dilation,
                              padding_mode)
        if args["out_channels"] % args["in_channels"]:
            fail(owner, "`out_channels` must be a multiple of `in_channels` (the depth multiplier). The "
                 "signature is nn.Conv2d's: DepthwiseConv2d(in_channels, out_channels, kernel_size, stride=1, "
                 "padding=0, dilation=1, bias=True, ...).",
                 f"in_channels={in_channels}, out_channels={out_channels}")
        algorithm = algorithms.check_name(owner, algorithm)
        super().__init__(in_channels, out_channels, args["kernel_size"], args["stride"], args["padding"],
                         args["dilation"], groups=in_channels, bias=bias, padding_mode=args["padding_mode"],
                         device=device, dtype=dtype)
        self._pad, self._explicit_pad = args["pad"], args["explicit_pad"]
        self.algorithm = algorithm

    @property
    def depth_multiplier(self) -> int:
        return self.out_channels // self.in_channels

    def forward(self, x):
        # The function cannot tell a wrong channel count from a depth multiplier; the layer can.
        self._check_input(x)
        x, pad = self._padded(x)
        return depthwise_conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation, self.algorithm)


class DepthwiseSeparableConv2d(ConvLayer, nn.Module):
    """Depthwise k x k convolution, optional norm/activation, then a 1x1 pointwise convolution
    and optional norm/activation (MobileNetV1, Xception). It has nn.Conv2d's attributes
    (in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode) for the
    convolution it replaces.

    ``norm_layer`` (e.g. ``nn.BatchNorm2d``) is called with the channel count and ``act_layer``
    (e.g. ``nn.ReLU``) with no argument. ``mid_norm``/``mid_act`` place them after the depthwise
    step too. ``bias`` adds one bias after the pointwise step (as Keras' SeparableConv2D); the
    depthwise step has none. ``depth_multiplier`` filters per input channel in the depthwise step.

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

    _repr_defaults = dict(ConvLayer._repr_defaults, depth_multiplier=1)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=False,
                 padding_mode="zeros", device=None, dtype=None, *, depth_multiplier=1, norm_layer=None,
                 act_layer=None, mid_norm=True, mid_act=True, algorithm="auto"):
        super().__init__()
        owner = type(self).__name__
        self._set_conv_arguments(conv_arguments(owner, in_channels, out_channels, kernel_size, stride, padding,
                                                dilation, padding_mode))
        self.depth_multiplier = positive_int(owner, "depth_multiplier", depth_multiplier)
        for name, layer in (("norm_layer", norm_layer), ("act_layer", act_layer)):
            if layer is not None and not callable(layer):
                fail(owner, f"`{name}` must be a callable returning an nn.Module, or None.",
                     f"{name}={layer!r}", TypeError)
        mid = in_channels * self.depth_multiplier
        factory = {"device": device, "dtype": dtype}
        self.depthwise = DepthwiseConv2d(in_channels, mid, kernel_size, stride, padding, dilation, bias=False,
                                         padding_mode=padding_mode, algorithm=algorithm, **factory)
        self.dw_norm = norm_layer(mid, **factory) if norm_layer and mid_norm else nn.Identity()
        self.dw_act = act_layer() if act_layer and mid_act else nn.Identity()
        self.pointwise = nn.Conv2d(mid, out_channels, 1, bias=bias, **factory)
        self.pw_norm = norm_layer(out_channels, **factory) if norm_layer else nn.Identity()
        self.pw_act = act_layer() if act_layer else nn.Identity()

    def _has_bias(self) -> bool:
        return self.pointwise.bias is not None

    def forward(self, x):
        x = self.dw_act(self.dw_norm(self.depthwise(x)))
        return self.pw_act(self.pw_norm(self.pointwise(x)))
