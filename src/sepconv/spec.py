"""`ConvSpec`: one validated description of a depthwise convolution call.

Every entry point (functional, layers, algorithms, cost analysis) builds a spec through
:func:`depthwise_spec`, so the argument rules live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import fail, pair, tensor

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def conv_out_size(size, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    """(out_h, out_w) of a convolution over a (h, w) input, each argument a pair (as F.conv2d)."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(size, kernel_size, stride, padding, dilation))


def layout_of(x: torch.Tensor) -> str:
    """'nhwc' when `x` is channels_last and not also plain contiguous, 'nchw' when contiguous,
    'strided' otherwise (non-contiguous views)."""
    if x.is_contiguous():
        return "nchw"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "nhwc"
    return "strided"


def same_padding(kernel_size, dilation) -> tuple[int, int, int, int]:
    """nn.Conv2d's ``padding="same"`` (stride 1) as F.pad's (left, right, top, bottom): a total
    of dilation*(kernel_size-1) per dimension, the odd pixel on the right/bottom."""
    (th, tw) = (d * (k - 1) for k, d in zip(kernel_size, dilation))
    return (tw // 2, tw - tw // 2, th // 2, th - th // 2)


def resolve_padding(owner: str, padding, kernel_size, stride, dilation) -> tuple[int, int]:
    """Turn `padding` (int, pair, 'same' or 'valid') into a symmetric (pad_h, pad_w)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding != "same":
            fail(owner, "`padding` must be an int, a pair of ints, 'same' or 'valid'.",
                 f"padding={padding!r}")
        if stride != (1, 1):
            fail(owner, "`padding='same'` needs stride 1 (as in nn.Conv2d).", f"stride={stride}")
        left, right, top, bottom = same_padding(kernel_size, dilation)
        if (left, top) != (right, bottom):
            fail(owner, "`padding='same'` needs an even total padding dilation*(kernel_size-1) "
                 "(an odd kernel, or an even dilation); asymmetric padding is not supported.",
                 f"kernel_size={tuple(kernel_size)}, dilation={dilation}")
        return (top, left)
    return pair(owner, "padding", padding, minimum=0)


@dataclass(frozen=True)
class ConvSpec:
    """Shape, arguments and context of one depthwise convolution call.

    ``weight`` has shape (C * depth_multiplier, 1, kh, kw); the output has shape
    (N, C * depth_multiplier, out_h, out_w).
    """

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    dtype: torch.dtype
    device: str
    layout: str
    requires_grad: bool
    has_bias: bool

    @property
    def depth_multiplier(self) -> int:
        return self.out_channels // self.channels

    @property
    def out_size(self) -> tuple[int, int]:
        return conv_out_size((self.height, self.width), self.kernel_size, self.stride, self.padding, self.dilation)

    def key(self) -> str:
        """A stable string naming everything that can change which algorithm is fastest."""
        return (f"n{self.batch}c{self.channels}m{self.depth_multiplier}h{self.height}w{self.width}"
                f"k{self.kernel_size[0]}x{self.kernel_size[1]}s{self.stride[0]}x{self.stride[1]}"
                f"p{self.padding[0]}x{self.padding[1]}d{self.dilation[0]}x{self.dilation[1]}"
                f"-{str(self.dtype).replace('torch.', '')}-{self.device}-{self.layout}"
                f"-{'train' if self.requires_grad else 'infer'}-{'bias' if self.has_bias else 'nobias'}")


def depthwise_spec(owner: str, x, weight, bias, stride, padding, dilation) -> ConvSpec:
    """Validate a depthwise call and describe it. `x` must already be 4-D."""
    tensor(owner, "input", x, (4,))
    tensor(owner, "weight", weight, (4,))
    stride = pair(owner, "stride", stride, minimum=1)
    dilation = pair(owner, "dilation", dilation, minimum=1)
    n, c, h, w = x.shape
    oc, one, kh, kw = weight.shape
    if one != 1:
        fail(owner, "`weight` must have shape (in_channels * depth_multiplier, 1, kh, kw).",
             f"weight.shape={tuple(weight.shape)}")
    if c == 0 or oc % c:
        fail(owner, f"`weight.shape[0]` must be a positive multiple of the input's {c} channels.",
             f"input.shape={tuple(x.shape)}, weight.shape={tuple(weight.shape)}")
    if kh < 1 or kw < 1:
        fail(owner, "`weight` must have a non-empty kernel.", f"weight.shape={tuple(weight.shape)}")
    if x.dtype not in _DTYPES:
        fail(owner, "`input` must be a floating-point tensor (float32, float64, bfloat16, "
             "float16).", f"input.dtype={x.dtype}", TypeError)
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        fail(owner, "`input`, `weight` and `bias` must have the same dtype.",
             f"input.dtype={x.dtype}, weight.dtype={weight.dtype}"
             + (f", bias.dtype={bias.dtype}" if bias is not None else ""), TypeError)
    if weight.device != x.device or (bias is not None and bias.device != x.device):
        fail(owner, "`input`, `weight` and `bias` must be on the same device.",
             f"input.device={x.device}, weight.device={weight.device}")
    if bias is not None:
        tensor(owner, "bias", bias, (1,))
        if bias.shape[0] != oc:
            fail(owner, f"`bias` must have shape ({oc},), one value per output channel.",
                 f"bias.shape={tuple(bias.shape)}")
    padding = resolve_padding(owner, padding, (kh, kw), stride, dilation)
    spec = ConvSpec(
        batch=n, channels=c, height=h, width=w, out_channels=oc, kernel_size=(kh, kw),
        stride=stride, padding=padding, dilation=dilation, dtype=x.dtype,
        device=x.device.type, layout=layout_of(x),
        requires_grad=torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)),
        has_bias=bias is not None)
    if min(spec.out_size) < 1:
        fail(owner, "the padded input is smaller than the dilated kernel: the output would be "
             "empty.", f"input size {(h, w)}, padding={padding}, kernel_size={(kh, kw)}, "
             f"dilation={dilation}")
    return spec
