"""Winograd transforms are exact (checked in rational arithmetic), and the dense Winograd
convolution matches F.conv2d within a measured bound, with correct gradients."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from sepconv.functional.winograd import transforms, winograd_conv2d, winograd_filters


@pytest.mark.parametrize("m", [2, 4, 6])
def test_transforms_compute_the_correlation_exactly(m):
    # For every basis filter g = e_k and input d = e_l, A^T [(G g) * (B^T d)] must equal the
    # correlation y_i = sum_k g_k d_{i+k}, i.e. [l == i + k]: an identity in exact rationals.
    at, g, bt = transforms(m)
    n = m + 2
    for k in range(3):
        for l in range(n):
            gg = [g[j][k] for j in range(n)]
            bd = [bt[j][l] for j in range(n)]
            y = [sum(at[i][j] * gg[j] * bd[j] for j in range(n)) for i in range(m)]
            assert y == [Fraction(int(l == i + k)) for i in range(m)]


def test_transform_errors():
    with pytest.raises(ValueError, match=r"transforms: F\(3,3\) is not defined"):
        transforms(3)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("shape,padding", [((2, 5, 9, 11), 1), ((1, 3, 7, 6), 0), ((1, 8, 12, 12), (1, 0))])
def test_dense_winograd_matches_conv2d(tile, shape, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(7, shape[1], 3, 3, generator=g)
    b = torch.randn(7, generator=g)
    want = F.conv2d(x.double(), w.double(), b.double(), padding=padding)
    got = winograd_conv2d(x, w, b, padding=padding, tile=tile)
    # normwise: channel reduction of C*9 products; F(4,3) measured ~10x direct's error
    scale = x.abs().max().double() * w.double().abs().sum(dim=(1, 2, 3)).view(1, -1, 1, 1) + b.double().abs().view(1, -1, 1, 1)
    eps = torch.finfo(torch.float32).eps
    assert ((got.double() - want).abs() <= (4 if tile == 2 else 24) * eps * scale).all()


@pytest.mark.parametrize("tile", [2, 4, 6])
def test_dense_winograd_with_precomputed_filters(tile):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 6, 9, 10, generator=g), torch.randn(5, 6, 3, 3, generator=g), torch.randn(5, generator=g)
    filters = winograd_filters(w, tile)
    assert filters.shape == ((tile + 2) ** 2, 5, 6)
    # the same arithmetic, only done ahead of the call: identical results
    assert torch.equal(winograd_conv2d(x, w, b, tile=tile, filters=filters), winograd_conv2d(x, w, b, tile=tile))
    with pytest.raises(ValueError, match=r"`filters` must be winograd_filters\(weight, tile=2\), of shape \(16, 5, 6\)"):
        winograd_conv2d(x, w, b, tile=2, filters=winograd_filters(w, 4))
    with pytest.raises(ValueError, match=r"winograd_filters: `weight` must have shape \(out_channels, in_channels, 3, 3\)"):
        winograd_filters(torch.randn(5, 6, 5, 5))


def test_dense_winograd_gradcheck_and_errors():
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: winograd_conv2d(a, c, padding=1, tile=2), (x, w))
    with pytest.raises(ValueError, match=r"winograd_conv2d: `weight` must have shape \(out_channels, 2, 3, 3\)"):
        winograd_conv2d(x, torch.randn(3, 2, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"`tile` must be one of \[2, 4, 6\]. Received: tile=3"):
        winograd_conv2d(x, w, tile=3)
