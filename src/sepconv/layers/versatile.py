"""Versatile convolution module (Wang et al., NeurIPS 2018)."""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from .._validation import fail, positive_int
from ..kernels.ops import _watched
from ..functional.versatile import NativeVersatile, native_even, versatile_conv2d, versatile_op
from .base import ConvLayer, conv_arguments


class VersatileConv2d(ConvLayer, nn.Module):
    """A convolution whose `out_channels` come from fewer primary filters: each k x k primary
    filter yields s = (k+1)/2 nested spatial sub-filters (if `spatial`) times n_c = delta/g + 1
    channel sub-filters (if `delta` > 0), sharing its weights and its multiplications. It has
    nn.Conv2d's arguments and attributes (kernel_size a pair of equal, odd sizes).

    Parameters: P * C_in * k * k (+ out_channels bias) with P = out_channels / (s * n_c),
    against out_channels * C_in * k * k for nn.Conv2d.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H_out, W_out), as nn.Conv2d.

    Example:
        >>> layer = VersatileConv2d(16, 32, 3, padding=1)   # 16 primary filters, 3x3 and 1x1 each
        >>> sum(p.numel() for p in layer.parameters())      # 16*16*9 + 32 (vs 32*16*9 + 32)
        2336
    """

    _repr_defaults = dict(ConvLayer._repr_defaults, spatial=True, delta=0, g=1)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, *, spatial=True, delta=0, g=1):
        super().__init__()
        owner = type(self).__name__
        self._set_conv_arguments(conv_arguments(owner, in_channels, out_channels, kernel_size, stride, padding,
                                                dilation, padding_mode))
        kh, kw = self.kernel_size
        if kh != kw:
            fail(owner, "`kernel_size` must be square (nested centre sub-filters).", f"kernel_size={kernel_size!r}")
        if spatial and kh % 2 == 0:
            fail(owner, "`kernel_size` must be odd when `spatial=True` (sub-filters share a centre).",
                 f"kernel_size={kernel_size!r}")
        self.spatial = bool(spatial)
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

    def forward(self, x):
        self._check_input(x)
        if isinstance(x, torch.Tensor) and x.dim() == 3:
            return self(x.unsqueeze(0)).squeeze(0)
        x, pad = self._padded(x)
        if not torch.is_grad_enabled():   # inference: the layer whole, or on the native GEMMs
            if _watched():
                return versatile_op()(x, self.weight, self.bias, None, list(self.stride), list(pad),
                                      list(self.dilation), self.spatial, self.delta, self.g)
            native = self._native(x)
            if native is not None:
                return native(x, self.stride, (pad[0], pad[0], pad[1], pad[1]), self.dilation)
        return versatile_conv2d(x, self.weight, self.bias, self.stride, pad, self.spatial, self.delta, self.g,
                                self.dilation)

    def _native(self, x):
        """The weights packed for the native kernel (kept until they change), or None where it
        does not serve x (no extension, not on CPU, a dtype it has no kernel for)."""
        w = self.weight
        if not (kernels.is_available() and x.device.type == "cpu" and x.dtype == w.dtype):
            return None
        bf16 = x.dtype == torch.bfloat16
        if x.dtype != torch.float32 and not (bf16 and kernels.load().gemm_bf16_supported()
                                             and native_even(self.in_channels, w.shape[-1], self.spatial,
                                                             self.delta, self.g)):
            return None
        key = (w.data_ptr(), w._version, x.dtype) + (
            () if self.bias is None else (self.bias.data_ptr(), self.bias._version))
        cached = self.__dict__.get("_native_cache")
        if cached is None or cached[0] != key:
            cached = (key, NativeVersatile(w, self.bias, self.spatial, self.delta, self.g, dtype=x.dtype))
            self.__dict__["_native_cache"] = cached
        return cached[1]
