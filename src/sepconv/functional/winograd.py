"""Winograd minimal filtering F(m, r) (Lavin & Gray 2016), generated from exact rationals.

The 1-D algorithm computes m outputs of an r-tap correlation from n = m + r - 1 inputs::

    y = A^T [ (G g) * (B^T d) ]          (1-D)
    Y = A^T [ (G g G^T) * (B^T d B) ] A  (2-D, nested)

The matrices come from the modified Toom-Cook construction with interpolation points
``a_0 .. a_{n-2}`` and infinity (:func:`transforms`). This file is the only place they are
defined. All functions here are plain differentiable PyTorch and run on any device.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..kernels.ops import NO_ACT, Act
from ..spec import ConvSpec
from .direct import memory_format_of

# Interpolation points per output tile m (r = 3). For F(4,3), {0, 1, -1, 2, -1/2} measured
# 3-4x lower max float32 error than Lavin's {0, +-1, +-2} or {0, +-1, +-1/2} (normwise, random
# inputs): mixing 2 and -1/2 balances the large entries between G and B^T.
POINTS = {
    2: (0, 1, -1),
    4: (0, 1, -1, 2, Fraction(-1, 2)),
    6: (0, 1, -1, Fraction(1, 2), Fraction(-1, 2), 2, -2),
}


def _poly_mul(p, q):
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def _prod_linear(roots, length):
    """Coefficients (lowest degree first) of prod (x - root), padded to `length`."""
    poly = [Fraction(1)]
    for root in roots:
        poly = _poly_mul(poly, [-Fraction(root), Fraction(1)])
    return poly + [Fraction(0)] * (length - len(poly))


@lru_cache(maxsize=None)
def transforms(m: int, r: int = 3) -> tuple[list, list, list]:
    """Exact (A^T, G, B^T) for F(m, r) as lists of Fractions: shapes (m, n), (n, r), (n, n).

    Convolution by Toom-Cook is s = C [(G g) * (A h)] with C the interpolation matrix; the
    correlation Winograd computes is its transpose in h, so B^T = C^T. The Lagrange
    denominators f_j are moved into G so that B^T has small integer-like entries.
    """
    if m not in POINTS or r != 3:
        raise ValueError(f"transforms: F({m},{r}) is not defined; m must be one of "
                         f"{sorted(POINTS)} and r must be 3. Received: m={m}, r={r}.")
    a = [Fraction(p) for p in POINTS[m]]
    n = m + r - 1
    assert len(a) == n - 1
    at = [[a[j] ** i for j in range(n - 1)] + [Fraction(int(i == m - 1))] for i in range(m)]
    g, bt = [], []
    for j in range(n - 1):
        others = [a[l] for l in range(n - 1) if l != j]
        f = Fraction(1)
        for o in others:
            f *= a[j] - o
        sign = 1 if f > 0 else -1
        g.append([sign * a[j] ** k / f for k in range(r)])
        bt.append([sign * c for c in _prod_linear(others, n)])
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    bt.append(_prod_linear(a, n))
    return at, g, bt


@lru_cache(maxsize=None)
def _matrices_cpu(m: int, dtype: torch.dtype):
    return tuple(torch.tensor([[float(v) for v in row] for row in mat], dtype=dtype)
                 for mat in transforms(m))


def matrices(m: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A^T, G, B^T) as tensors. Transforms are computed in float32 for bfloat16/float16 inputs
    (the tile arithmetic is where low precision loses most), then cast back."""
    return tuple(t.to(device) for t in _matrices_cpu(m, _compute_dtype(dtype)))


def _compute_dtype(dtype):
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _tiles(x, m, n, oh, ow, ph, pw):
    """Pad and cut `x` (N, C, H, W) into overlapping n x n tiles with step m:
    (N, C, th, tw, n, n), covering an (th*m, tw*m) output."""
    th, tw = -(-oh // m), -(-ow // m)
    need_h, need_w = th * m + n - m, tw * m + n - m
    h, w = x.shape[-2:]
    x = F.pad(x, (pw, need_w - w - pw, ph, need_h - h - ph))
    return x.unfold(2, n, m).unfold(3, n, m), th, tw


def _untile(y, oh, ow):
    """(N, K, th, tw, m, m) -> (N, K, oh, ow)."""
    nb, k, th, tw, m, _ = y.shape
    return y.permute(0, 1, 2, 4, 3, 5).reshape(nb, k, th * m, tw * m)[:, :, :oh, :ow]


def depthwise_winograd_2d(x, weight, bias, spec: ConvSpec, m: int):
    """Depthwise 3x3, stride 1, dilation 1, by 2-D F(m x m, 3 x 3) per channel."""
    out_dtype = x.dtype
    at, g, bt = matrices(m, x.dtype, x.device)
    n = m + 2
    oh, ow = spec.out_size
    x = x.to(at.dtype)
    if spec.depth_multiplier > 1:
        x = x.repeat_interleave(spec.depth_multiplier, dim=1)
    tiles, th, tw = _tiles(x, m, n, oh, ow, *spec.padding)
    # One GEMM per transform: vec(B^T d B) = (B^T kron B^T) vec(d) over all tiles at once.
    v = tiles.reshape(*tiles.shape[:4], n * n) @ torch.kron(bt, bt).t()   # (N, C, th, tw, n*n)
    u = (g @ weight[:, 0].to(at.dtype) @ g.t()).reshape(-1, 1, 1, n * n)  # (C, 1, 1, n*n)
    y = (v * u) @ torch.kron(at, at).t()                                    # (N, C, th, tw, m*m)
    y = _untile(y.reshape(*y.shape[:4], m, m), oh, ow)
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1)
    return y.to(out_dtype).contiguous(memory_format=memory_format_of(spec))


def depthwise_winograd_rows(x, weight, bias, spec: ConvSpec):
    """Depthwise 3x3 by row-wise 1-D F(2,3), as MNN does: every padded input row is transformed
    once (B^T over width tiles) and the cached transformed row serves the three output rows
    that read it; each output row sums three element-wise products and one A^T."""
    out_dtype = x.dtype
    at, g, bt = matrices(2, x.dtype, x.device)
    oh, ow = spec.out_size
    ph, pw = spec.padding
    x = x.to(at.dtype)
    if spec.depth_multiplier > 1:
        x = x.repeat_interleave(spec.depth_multiplier, dim=1)
    tw = -(-ow // 2)
    w = x.shape[-1]
    xp = F.pad(x, (pw, tw * 2 + 2 - w - pw, ph, ph))
    rows = xp.unfold(3, 4, 2) @ bt.t()                    # (N, C, H+2ph, tw, 4): cached rows
    u = weight[:, 0].to(at.dtype) @ g.t()                 # (C, 3, 4): G applied to each kernel row
    acc = None
    for i in range(3):
        term = rows[:, :, i: i + oh] * u[None, :, i, None, None, :]
        acc = term if acc is None else acc + term
    y = (acc @ at.t()).reshape(*acc.shape[:3], tw * 2)[..., :ow]
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1)
    return y.to(out_dtype).contiguous(memory_format=memory_format_of(spec))


def winograd_filters(weight, tile: int = 2):
    """The Winograd-domain filters U = G g G^T of a dense 3x3 weight, laid out for
    :func:`winograd_conv2d`'s ``filters`` argument: (tile+2)**2 x K x C.

    Computing U costs a GEMM over all K*C filters (with an inner dimension of 9); an inference
    caller that reuses the weight computes it once. Example:

        >>> w = torch.randn(16, 8, 3, 3)
        >>> winograd_filters(w, tile=4).shape
        torch.Size([36, 16, 8])
    """
    from .._validation import fail, tensor

    tensor("winograd_filters", "weight", weight, (4,))
    if tuple(weight.shape[2:]) != (3, 3):
        fail("winograd_filters", "`weight` must have shape (out_channels, in_channels, 3, 3).",
             f"weight.shape={tuple(weight.shape)}")
    if tile not in POINTS:
        fail("winograd_filters", f"`tile` must be one of {sorted(POINTS)}.", f"tile={tile!r}")
    _, g, _ = matrices(tile, weight.dtype, weight.device)
    k, c, n = weight.shape[0], weight.shape[1], tile + 2
    return (torch.kron(g, g) @ weight.to(g.dtype).reshape(k * c, 9).t()).view(n * n, k, c)


def winograd_conv2d(x, weight, bias=None, padding=1, tile: int = 2, filters=None):
    """Dense (groups=1) 3x3 convolution, stride 1, dilation 1, by 2-D Winograd F(tile, 3).

    The input transform is shared by all K filters and the filter transform by all tiles; the
    element-wise products become n*n GEMMs of shape (K x C) @ (C x tiles).

    Args:
        x: (N, C, H, W). weight: (K, C, 3, 3). bias: (K,) or None. padding: int or pair.
        filters: optional ``winograd_filters(weight, tile)``, computed once by the caller to
            skip the per-call filter transform (inference). It must come from this weight.
    Returns:
        (N, K, H + 2p - 2, W + 2p - 2).

    Example:
        >>> x, w = torch.randn(1, 8, 10, 10), torch.randn(16, 8, 3, 3)
        >>> torch.allclose(winograd_conv2d(x, w), F.conv2d(x, w, padding=1), atol=1e-4)
        True
    """
    from .._validation import fail, pair, tensor

    owner = "winograd_conv2d"
    tensor(owner, "input", x, (4,))
    tensor(owner, "weight", weight, (4,))
    if tuple(weight.shape[1:]) != (x.shape[1], 3, 3):
        fail(owner, f"`weight` must have shape (out_channels, {x.shape[1]}, 3, 3).",
             f"weight.shape={tuple(weight.shape)}")
    if tile not in POINTS:
        fail(owner, f"`tile` must be one of {sorted(POINTS)}.", f"tile={tile!r}")
    want = ((tile + 2) ** 2, weight.shape[0], x.shape[1])
    if filters is not None and tuple(filters.shape) != want:
        fail(owner, f"`filters` must be winograd_filters(weight, tile={tile}), of shape {want}.",
             f"filters.shape={tuple(filters.shape)}")
    ph, pw = pair(owner, "padding", padding)
    out_dtype, memory_format = x.dtype, (
        torch.channels_last if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format)
    at, g, bt = matrices(tile, x.dtype, x.device)
    n, m = tile + 2, tile
    nb, c, h, w = x.shape
    k = weight.shape[0]
    oh, ow = h + 2 * ph - 2, w + 2 * pw - 2
    if oh < 1 or ow < 1:
        fail(owner, "the padded input must be at least 3x3.", f"input.shape={tuple(x.shape)}")
    tiles, th, tw = _tiles(x.to(at.dtype), m, n, oh, ow, ph, pw)
    # Each 2-D transform P X Q^T of row-major-flattened tiles is one GEMM with the Kronecker
    # product P (x) Q: three large GEMMs instead of millions of tiny batched 3x3/n x n ones
    # (which made F(6x6) 25x slower than F(2x2) at 512 channels).
    # (computed frequency-major, so that bmm gets contiguous operands and copies nothing)
    v = (torch.kron(bt, bt) @ tiles.reshape(-1, n * n).t()).reshape(n * n, nb, c, th * tw)
    v = v.transpose(1, 2).reshape(n * n, c, nb * th * tw)
    u = winograd_filters(weight, tile) if filters is None else filters.to(at.dtype)
    prod = torch.bmm(u, v)                                              # (n*n, K, N*th*tw)
    y = prod.permute(1, 2, 0).reshape(-1, n * n) @ torch.kron(at, at).t()   # (K*N*th*tw, m*m)
    y = _untile(y.reshape(k, nb, th, tw, m, m).transpose(0, 1), oh, ow)
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1)
    return y.to(out_dtype).contiguous(memory_format=memory_format)


# ---------------------------------------------------------------- runners of the native kernels
# (the filter transform is this module's; the tile arithmetic is the extension's)

def run_winograd_rows(x, weight, bias, spec: ConvSpec, act: Act = NO_ACT):
    """Depthwise 3x3 (stride 1, dilation 1, multiplier 1) by the native row-wise F(2,3)
    kernel, inference only; output in x's memory format."""
    return _winograd(x, weight, bias, spec, act, tile=2, two_d=False)


def run_winograd_2d(m: int):
    """The runner of the native 2-D F(m x m, 3x3) kernel (m = 2 or 4): depthwise 3x3,
    stride 1, dilation 1, multiplier 1, inference only; output in x's memory format."""
    return lambda x, weight, bias, spec, act=NO_ACT: _winograd(x, weight, bias, spec, act, m, two_d=True)


def _winograd(x, weight, bias, spec, act, tile, two_d):
    _, g, _ = matrices(tile, torch.float32, "cpu")
    w = weight[:, 0].float()
    # U = G g G^T per channel as (n, n, C), or G applied to each kernel row as (3, 4, C)
    u = (g @ w @ g.t() if two_d else w @ g.t()).permute(1, 2, 0).contiguous()
    y = torch.ops.sepconv.winograd(x, u, bias, spec.padding, two_d, *act)
    return y if spec.layout == "nhwc" else y.contiguous()
