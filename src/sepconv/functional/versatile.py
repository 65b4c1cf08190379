"""Versatile filters (Wang et al., NeurIPS 2018).

A primary filter W (C_in, k, k) yields secondary filters:

* spatial: the nested centre windows k, k-2, ..., 1 (s = (k+1)/2 of them);
* channel: windows of c_hat = C_in - delta input channels with stride g (n_c = delta/g + 1).

Two exact forms compute them:

* "crops" (the default, fast): one convolution per nested sub-filter on the cropped weights,
  and per channel *segment* (the pieces the overlapping channel windows cut C_in into), so each
  channel product is computed once and a window is a sum of its segments. MACs per output
  position and primary filter: C_in * (k^2 + (k-2)^2 + ... + 1), against s * n_c * C_in * k^2
  for the standard convolution with as many outputs (3x3: 10/18 per channel window, 5x5:
  35/75, 7x7: 84/196), on the convolution library's fastest kernels.
* "shared": every tap product W[tap] * x[tap] computed once (per concentric ring and channel
  chunk, prefix sums over rings, window sums over chunks): C_in * k^2 MACs per primary filter,
  the fewest, but through unfold and a batched GEMM, which is slower. The reference for the
  sharing.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .._validation import fail

FORMS = ("crops", "shared")


@lru_cache(maxsize=None)
def ring_taps(k: int) -> tuple[tuple[int, ...], ...]:
    """Flat tap indices (row * k + col) of the concentric rings of a k x k kernel, innermost
    first: ring 0 is the centre, ring r the border of the centre (2r+1)^2 window."""
    c = k // 2
    rings = [[] for _ in range(c + 1)]
    for i in range(k):
        for j in range(k):
            rings[max(abs(i - c), abs(j - c))].append(i * k + j)
    return tuple(tuple(r) for r in rings)


@lru_cache(maxsize=None)
def channel_segments(c: int, delta: int, g: int) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, ...], ...]]:
    """The channel windows [t*g, t*g + c - delta) cut [0, c) into segments; returns the segments
    (start, stop) and, per window t, the indices of the segments it is the sum of."""
    width, n_c = c - delta, delta // g + 1
    cuts = sorted({0, c} | {t * g for t in range(n_c)} | {t * g + width for t in range(n_c)})
    segments = tuple(zip(cuts[:-1], cuts[1:]))
    windows = tuple(tuple(i for i, (a, b) in enumerate(segments) if t * g <= a and b <= t * g + width)
                    for t in range(n_c))
    return segments, windows


def versatile_conv2d(x, weight, bias=None, stride=1, padding=0, spatial=True, delta=0, g=1, dilation=1,
                     form="crops"):
    """Versatile convolution.

    Args:
        x: (N, C_in, H, W). weight: (P, C_in, k, k) primary filters, k odd when `spatial`.
        bias: (P * s * n_c,) or None, s = (k+1)//2 if spatial else 1, n_c = delta//g + 1.
        stride, padding, dilation: as F.conv2d (ints or pairs).
        delta, g: channel versatile hyper-parameters (0 disables); g must divide C_in and delta.
        form: "crops" (one convolution per nested sub-filter and channel segment; fast) or
            "shared" (each tap product once; the fewest MACs, slower). Both are exact.
    Returns:
        (N, s * n_c * P, H_out, W_out): one block of P channels per sub-filter, channel index
        (spatial * n_c + window) * P + p, where spatial 0 is the full k x k filter and window t
        covers input channels [t*g, t*g + C_in - delta). (Blocks, not interleaved filters: each
        block is one dense convolution's output, written in place without a shuffle.)

    Example:
        >>> y = versatile_conv2d(torch.randn(1, 4, 8, 8), torch.randn(2, 4, 3, 3), padding=1)
        >>> y.shape   # 2 primary filters x (3x3, 1x1)
        torch.Size([1, 4, 8, 8])
    """
    if form == "crops":
        return _crops(x, weight, bias, _pair(stride), _pair(padding), spatial, delta, g, _pair(dilation))
    if form == "shared":
        return _shared(x, weight, bias, _pair(stride), _pair(padding), spatial, delta, g, _pair(dilation))
    fail("versatile_conv2d", f"`form` must be one of {FORMS}.", f"form={form!r}")


def _crops(x, weight, bias, stride, padding, spatial, delta, g, dilation):
    p, c, k, _ = weight.shape
    s = (k + 1) // 2 if spatial else 1
    segments, windows = channel_segments(c, delta, g)
    bias = None if bias is None else bias.view(s, len(windows), p)
    blocks = []
    for j in range(s):  # sub-filter j: the centre (k - 2j) x (k - 2j) window
        w_j = weight[:, :, j: k - j, j: k - j]
        x_j, pad_j = _crop_input(x, padding, (j * dilation[0], j * dilation[1]))
        if len(segments) == 1:  # no channel windows: the bias goes into the convolution
            blocks.append(F.conv2d(x_j, w_j, None if bias is None else bias[j, 0], stride, pad_j, dilation))
            continue
        parts = [F.conv2d(x_j[:, a:b], w_j[:, a:b], None, stride, pad_j, dilation) for a, b in segments]
        for t, members in enumerate(windows):
            block = parts[members[0]]
            for i in members[1:]:
                block = block + parts[i]
            blocks.append(block if bias is None else block + bias[j, t].view(1, p, 1, 1))
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, 1)


def _crop_input(x, padding, offset):
    """Input and padding for a sub-filter whose taps start `offset` pixels inside the full
    filter's: less padding, or, where the padding runs out, the input cropped (same outputs)."""
    pads = [p - o for p, o in zip(padding, offset)]
    (mh, mw) = (max(-p, 0) for p in pads)
    if mh or mw:
        x = x[..., mh: x.shape[-2] - mh, mw: x.shape[-1] - mw]
    return x, tuple(max(p, 0) for p in pads)


def _shared(x, weight, bias, stride, padding, spatial, delta, g, dilation):
    p, c, k, _ = weight.shape
    n, _, h, w = x.shape
    s = (k + 1) // 2 if spatial else 1
    n_c, chunks = delta // g + 1, c // g
    width = (c - delta) // g  # chunks per channel window
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = (h + 2 * ph - dh * (k - 1) - 1) // sh + 1, (w + 2 * pw - dw * (k - 1) - 1) // sw + 1
    cols = F.unfold(x, k, dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw)).view(n, chunks, g, k * k, oh * ow)
    wt = weight.reshape(p, chunks, g, k * k)
    rings = ring_taps(k) if spatial else (tuple(range(k * k)),)
    acc, outs = None, []
    for taps in rings:  # innermost ring first: prefix sums give the nested windows
        idx = torch.tensor(taps, device=x.device)
        # (chunks, P, g*t) @ (N, chunks, g*t, L): a batched GEMM (einsum would lower a
        # one-tap ring to mul + sum, invisible to MAC counting)
        w_r = wt.index_select(3, idx).permute(1, 0, 2, 3).reshape(chunks, p, -1)
        x_r = cols.index_select(3, idx).reshape(n, chunks, -1, oh * ow)
        part = torch.matmul(w_r, x_r)                          # (N, chunks, P, L)
        acc = part if acc is None else acc + part             # (N, chunks, P, L)
        outs.append(acc)
    outs = outs[::-1]                                          # spatial 0 = full k x k
    per_spatial = []
    for a in outs:
        # window sums over channel chunks: (N, n_c, P, L)
        win = a.unfold(1, width, 1).sum(-1) if n_c > 1 or width != chunks else a.sum(1, keepdim=True)
        per_spatial.append(win)
    y = torch.stack(per_spatial, 1)                            # (N, s, n_c, P, L)
    y = y.reshape(n, s * n_c * p, oh, ow)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)
def versatile_conv2d_reference(x, weight, bias=None, stride=1, padding=0, spatial=True, delta=0, g=1, dilation=1):
    """One masked F.conv2d per secondary filter: the definition, for tests and comparisons."""
    p, c, k, _ = weight.shape
    s = (k + 1) // 2 if spatial else 1
    n_c, width = delta // g + 1, c - delta
    outs = []
    for j in range(s):
        mask = torch.zeros(k, k, dtype=weight.dtype, device=weight.device)
        mask[j: k - j, j: k - j] = 1
        for t in range(n_c):
            for i in range(p):
                wsub = torch.zeros_like(weight[i: i + 1])
                wsub[:, t * g: t * g + width] = (weight[i: i + 1] * mask)[:, t * g: t * g + width]
                outs.append(F.conv2d(x, wsub, None, stride, padding, dilation))
    y = torch.cat(outs, 1)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


# ---------------------------------------------------------------- native form (inference)
#
# The layer as im2col + GEMMs (kernels/bindings.cpp: versatile_gemm). The im2col columns are
# ordered by channel segment, then ring (innermost first), then tap, so that one sub-filter
# over one segment is one contiguous column range: the centre (k - 2j)^2 taps of sub-filter j
# are a prefix of its segment's columns. Every such range is one GEMM call on one packed copy
# of the primary filters; a channel window sums its segments through the calls' partial sums
# (accum), each segment's product computed once, so the MACs are the "crops" count:
# P * C_in * (k^2 + (k-2)^2 + ... + 1) per output pixel.

@lru_cache(maxsize=256)
def native_program(c: int, k: int, spatial: bool, delta: int, g: int):
    """(runs, calls, blocks) of versatile_gemm for C_in = c and a k x k primary filter: runs are
    (kernel row, column, c0, c1) in column order, calls (k0, len, out_block, accum_block,
    final), block b = spatial j * n_c + window t."""
    rings = ring_taps(k) if spatial else (tuple(range(k * k)),)
    segments, windows = channel_segments(c, delta, g)
    runs, starts = [], []
    for a, b in segments:
        starts.append(sum(r[3] - r[2] for r in runs))
        runs += [(tap // k, tap % k, a, b) for ring in rings for tap in ring]
    n_c = len(windows)
    calls = []
    for j in range(len(rings)):
        taps = sum(len(r) for r in rings[: len(rings) - j])

        def chain(block, members, first_accum=-1, final=True):
            for i, seg in enumerate(members):
                a, b = segments[seg]
                last = final and i == len(members) - 1
                calls.append((starts[seg], (b - a) * taps, block, first_accum if i == 0 else block, int(last)))

        blocks = [j * n_c + t for t in range(n_c)]
        if n_c == 2:  # the segments both windows hold are computed once, into window 1's block
            both = [s for s in windows[0] if s in windows[1]]
            chain(blocks[1], both, final=False)
            shared = blocks[1] if both else -1
            chain(blocks[0], [s for s in windows[0] if s not in both], first_accum=shared)
            chain(blocks[1], [s for s in windows[1] if s not in both], first_accum=shared)
        else:
            for t in range(n_c):
                chain(blocks[t], windows[t])
    return tuple(runs), tuple(calls), len(rings) * n_c


def native_weight(weight: torch.Tensor, spatial: bool, delta: int, g: int) -> torch.Tensor:
    """The primary filters (P, C_in, k, k) as (P, K) in native_program's column order."""
    p, c, k, _ = weight.shape
    runs, _, _ = native_program(c, k, spatial, delta, g)
    return torch.cat([weight[:, a:b, i, j] for i, j, a, b in runs], 1)


def native_even(c: int, k: int, spatial: bool, delta: int, g: int) -> bool:
    """Whether every call starts at an even column (bfloat16 packs columns by pairs)."""
    return all(call[0] % 2 == 0 for call in native_program(c, k, spatial, delta, g)[1])


_PANEL_PAD = 64   # bias and scale are read a whole GEMM panel (<= 32 floats) past a block


def native_vector(v: torch.Tensor | None) -> torch.Tensor | None:
    """A per-output-channel bias or scale as versatile_gemm reads it (float32, padded)."""
    return None if v is None else F.pad(v.detach().float().reshape(-1), (0, _PANEL_PAD))


class NativeVersatile:
    """A versatile layer's weights packed once for versatile_gemm, with an optional per-channel
    scale applied before the bias (a batch norm after the layer). Inference only.

    Shapes: x (N, C_in, H, W) -> (N, s * n_c * P, H_out, W_out) channels_last, as
    versatile_conv2d; `pad` is (top, bottom, left, right).

    Example:
        >>> from sepconv import kernels
        >>> w, x = torch.randn(4, 8, 3, 3), torch.randn(1, 8, 6, 6)
        >>> if kernels.is_available():
        ...     y = NativeVersatile(w, None)(x, (1, 1), (1, 1, 1, 1), (1, 1))
        ...     torch.testing.assert_close(y, versatile_conv2d(x, w, padding=1), atol=1e-4, rtol=1e-4)
    """

    def __init__(self, weight, bias, spatial=True, delta=0, g=1, scale=None, dtype=torch.float32):
        from .. import kernels

        C = kernels.load()
        p, c, k, _ = weight.shape
        self.p, self.k = p, k
        runs, calls, self.blocks = native_program(c, k, spatial, delta, g)
        self.runs, self.calls = [v for r in runs for v in r], [v for q in calls for v in q]
        w = native_weight(weight.detach().float(), spatial, delta, g)
        self.packed = C.gemm_pack(w, dtype == torch.bfloat16)
        self.bias, self.scale = native_vector(bias), native_vector(scale)

    def __call__(self, x, stride, pad, dilation, act=("none", 0.0, 0.0)):
        from .. import kernels

        return kernels.load().versatile_gemm(x, self.packed, self.p, self.blocks, self.bias, self.scale, self.runs,
                                             self.calls, [self.k, self.k], list(stride), list(pad), list(dilation),
                                             *act)


_op_defined = False


def versatile_op():
    """``torch.ops.sepconv.versatile`` (defined on first use), the layer as one op in traced
    graphs, so that optimize_for_inference finds it whole: (x, weight, bias, scale, stride,
    padding, dilation, spatial, delta, g) -> versatile_conv2d(x, weight) * scale + bias, with
    scale and bias per output channel (scale None: 1)."""
    global _op_defined
    if not _op_defined:
        @torch.library.custom_op("sepconv::versatile", mutates_args=())
        def versatile(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None,
                      stride: list[int], padding: list[int], dilation: list[int], spatial: bool, delta: int,
                      g: int) -> torch.Tensor:
            if scale is None:
                return versatile_conv2d(x, weight, bias, stride, padding, spatial, delta, g, dilation)
            y = versatile_conv2d(x, weight, None, stride, padding, spatial, delta, g, dilation) * scale.view(1, -1, 1, 1)
            return y if bias is None else y + bias.view(1, -1, 1, 1)

        @versatile.register_fake
        def _(x, weight, bias, scale, stride, padding, dilation, spatial, delta, g):
            p, _, k, _ = weight.shape
            subs = ((k + 1) // 2 if spatial else 1) * (delta // g + 1)
            oh, ow = ((x.shape[i + 2] + 2 * padding[i] - dilation[i] * (k - 1) - 1) // stride[i] + 1 for i in (0, 1))
            return x.new_empty((x.shape[0], p * subs, oh, ow))

        _op_defined = True
    return torch.ops.sepconv.versatile.default
