"""Versatile filters (Wang et al., NeurIPS 2018), computed with shared work.

A primary filter W (C_in, k, k) yields secondary filters:

* spatial: the nested centre windows k, k-2, ..., 1 (s = (k+1)/2 of them);
* channel: windows of c_hat = C_in - delta input channels with stride g (n_c = delta/g + 1).

Every secondary output is a sum of the primary filter's taps over a subset of (ring, channel
chunk) cells, so each product W[tap] * x[tap] is computed once: per concentric ring r and
per chunk of g channels, a partial result P[r, chunk]; spatial outputs are prefix sums over
rings and channel outputs are window sums over chunks. The multiply count is that of one
k x k convolution per primary filter, not one per secondary filter.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


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


def versatile_conv2d(x, weight, bias=None, stride=1, padding=0, spatial=True, delta=0, g=1, dilation=1):
    """Versatile convolution.

    Args:
        x: (N, C_in, H, W). weight: (P, C_in, k, k) primary filters, k odd when `spatial`.
        bias: (P * s * n_c,) or None, s = (k+1)//2 if spatial else 1, n_c = delta//g + 1.
        stride, padding, dilation: as F.conv2d (ints or pairs).
        delta, g: channel versatile hyper-parameters (0 disables); g must divide C_in and delta.
    Returns:
        (N, P * s * n_c, H_out, W_out); channel index p * s * n_c + spatial * n_c + window,
        spatial 0 is the full k x k filter and window t covers channels [t*g, t*g + C_in - delta).

    Example:
        >>> y = versatile_conv2d(torch.randn(1, 4, 8, 8), torch.randn(2, 4, 3, 3), padding=1)
        >>> y.shape   # 2 primary filters x (3x3, 1x1)
        torch.Size([1, 4, 8, 8])
    """
    p, c, k, _ = weight.shape
    n, _, h, w = x.shape
    s = (k + 1) // 2 if spatial else 1
    n_c, chunks = delta // g + 1, c // g
    width = (c - delta) // g  # chunks per channel window
    (sh, sw), (ph, pw), (dh, dw) = (_pair(v) for v in (stride, padding, dilation))
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
    y = torch.stack(per_spatial, 2)                            # (N, n_c, s, P, L)
    y = y.permute(0, 3, 2, 1, 4).reshape(n, p * s * n_c, oh, ow)
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
    for i in range(p):
        for j in range(s):
            mask = torch.zeros(k, k, dtype=weight.dtype, device=weight.device)
            mask[j: k - j, j: k - j] = 1
            for t in range(n_c):
                wsub = torch.zeros_like(weight[i: i + 1])
                wsub[:, t * g: t * g + width] = (weight[i: i + 1] * mask)[:, t * g: t * g + width]
                outs.append(F.conv2d(x, wsub, None, stride, padding, dilation))
    y = torch.cat(outs, 1)
    return y if bias is None else y + bias.view(1, -1, 1, 1)
