"""Versatile filters: the forms (crops, shared, native) against the definition, the layer in
training and inference, optimize_for_inference with batch norms folded, the zoo's counts."""

import itertools

import pytest
import torch
from torch import nn

import sepconv
from sepconv import kernels
from sepconv.analysis import count
from sepconv.functional.versatile import (FORMS, NativeVersatile, native_program, versatile_conv2d,
                                          versatile_conv2d_reference)
from sepconv.layers import VersatileConv2d
from sepconv.models import create_model

native = pytest.mark.skipif(not kernels.is_available(), reason="native kernels unavailable")

# (C_in, P, k, delta, g, spatial, stride, padding, dilation)
CASES = [
    (4, 2, 3, 0, 1, True, 1, 1, 1), (6, 3, 5, 2, 2, True, 2, 2, 1), (8, 2, 3, 4, 2, False, 1, 0, 1),
    (8, 2, 1, 6, 2, True, 1, 0, 1), (5, 2, 7, 0, 1, True, 1, 3, 1), (6, 1, 3, 3, 3, True, (2, 1), (0, 1), 1),
    (16, 4, 3, 2, 2, True, 1, 1, 2), (16, 3, 5, 4, 4, True, 1, 2, (1, 2)), (8, 5, 3, 2, 1, True, 2, 0, 1),
]


def _case(c, p, k, delta, g, spatial, dtype=torch.float64, n=2):
    gen = torch.Generator().manual_seed(c * 100 + p * 10 + k)
    x = torch.randn(n, c, 9, 11, dtype=dtype, generator=gen)
    w = torch.randn(p, c, k, k, dtype=dtype, generator=gen)
    subs = ((k + 1) // 2 if spatial else 1) * (delta // g + 1)
    return x, w, torch.randn(p * subs, dtype=dtype, generator=gen)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("c,p,k,delta,g,spatial,stride,pad,dil", CASES)
def test_forms_match_one_masked_conv_per_subfilter(form, c, p, k, delta, g, spatial, stride, pad, dil):
    x, w, b = _case(c, p, k, delta, g, spatial)
    want = versatile_conv2d_reference(x, w, b, stride, pad, spatial, delta, g, dil)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        got = versatile_conv2d(inp, w, b, stride, pad, spatial, delta, g, dil, form=form)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_output_is_one_block_per_subfilter():
    # block (spatial j, window t) = channels [(j * n_c + t) * P, ... + P): check one by one
    x, w = torch.randn(1, 8, 6, 6, dtype=torch.float64), torch.randn(3, 8, 3, 3, dtype=torch.float64)
    y = versatile_conv2d(x, w, padding=1, delta=2, g=2)           # s = 2, n_c = 2, P = 3
    centre = torch.zeros_like(w)
    centre[:, :, 1, 1] = w[:, :, 1, 1]
    for j, sub in enumerate((w, centre)):
        for t, (a, b) in enumerate(((0, 6), (2, 8))):
            ref = torch.nn.functional.conv2d(x[:, a:b], sub[:, a:b], padding=1)
            torch.testing.assert_close(y[:, (2 * j + t) * 3: (2 * j + t + 1) * 3], ref, rtol=1e-12, atol=1e-12)


def test_bad_form_is_refused():
    with pytest.raises(ValueError, match=r"`form` must be one of \('crops', 'shared'\).*form='unfold'"):
        versatile_conv2d(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 3, 3), form="unfold")


def test_mac_counts_crops_and_shared():
    layer = VersatileConv2d(8, 24, 5, padding=2, bias=False)     # 8 primary filters, 3 sub-filters each
    x = torch.randn(1, 8, 10, 10)
    # crops (training, the default form): each nested sub-filter once per primary filter:
    # 8 filters * 8 inputs * (25 + 9 + 1) taps * 100 positions
    assert count(layer, x).total.macs == 8 * 8 * (25 + 9 + 1) * 100
    # the layer whole in inference counts as its kernels compute, the same
    with torch.no_grad():
        assert count(layer, x).total.macs == 8 * 8 * (25 + 9 + 1) * 100
    # the shared form: every tap product once, 8 * 8 * 25 * 100 (against 24 * 8 * 25 * 100 for nn.Conv2d)
    class Shared(nn.Module):
        def forward(self, t):
            return versatile_conv2d(t, layer.weight, padding=2, form="shared")

    assert count(Shared(), x).total.macs == 8 * 8 * 25 * 100
    # channel windows: segments [0,2) [2,6) [6,8) summed into 2 windows: each segment once
    channel = VersatileConv2d(8, 16, 3, padding=1, bias=False, delta=2, g=2)   # 4 primary filters
    with torch.no_grad():
        assert count(channel, x).total.macs == 4 * 8 * (9 + 1) * 100


def test_layer_parameters_gradcheck_and_errors():
    layer = VersatileConv2d(16, 32, 3, padding=1)
    assert sum(p.numel() for p in layer.parameters()) == 16 * 16 * 9 + 32   # vs 32*16*9 + 32
    small = VersatileConv2d(4, 8, 3, padding=1, delta=2, g=2, dtype=torch.float64)  # 2 spatial x 2 channel
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small, (x,))
    assert torch.autograd.gradgradcheck(small, (x,))
    with pytest.raises(ValueError, match=r"`out_channels` must be divisible by the 2 sub-filters .* Received: out_channels=7"):
        VersatileConv2d(4, 7, 3)
    with pytest.raises(ValueError, match=r"`kernel_size` must be odd when `spatial=True`"):
        VersatileConv2d(4, 8, 4)
    with pytest.raises(ValueError, match=r"`g` must divide both `in_channels` and `delta`"):
        VersatileConv2d(6, 8, 3, delta=3, g=2)
    with pytest.raises(ValueError, match=r"`delta` must be an int with 0 <= delta < in_channels"):
        VersatileConv2d(4, 8, 3, delta=4)


# ------------------------------------------------------------------------------ native form

def test_native_program_covers_each_segment_once_per_subfilter():
    runs, calls, blocks = native_program(16, 5, True, 4, 4)       # 3 sub-filters x 2 windows
    assert blocks == 6
    assert sum(r[3] - r[2] for r in runs) == 16 * 25               # every tap and channel once
    # K columns multiplied: each segment (widths 4, 8, 4) once per sub-filter: 16 * (25 + 9 + 1)
    assert sum(c[1] for c in calls) == 16 * (25 + 9 + 1)
    assert sorted(c[2] for c in calls if c[4]) == list(range(6))    # one final call per block


@native
@pytest.mark.parametrize("c,p,k,delta,g,spatial,stride,pad,dil", CASES)
def test_native_matches_definition(c, p, k, delta, g, spatial, stride, pad, dil):
    x, w, b = _case(c, p, k, delta, g, spatial, dtype=torch.float32, n=3)
    s = torch.rand(b.numel()) + 0.5
    st, dl = (stride,) * 2 if isinstance(stride, int) else stride, (dil,) * 2 if isinstance(dil, int) else dil
    ph, pw = (pad,) * 2 if isinstance(pad, int) else pad
    want = versatile_conv2d_reference(x.double(), w.double(), None, stride, pad, spatial, delta, g, dil)
    want = want * s.double().view(1, -1, 1, 1) + b.double().view(1, -1, 1, 1)
    for act, ref in ((("none", 0.0, 0.0), want), (("relu", 0.0, 0.0), want.relu())):
        got = NativeVersatile(w, b, spatial, delta, g, scale=s)(x, st, (ph, ph, pw, pw), dl, act)
        assert got.is_contiguous(memory_format=torch.channels_last)
        # float32 sums of up to C * k^2 = 400 products of unit-variance values
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)


@native
def test_native_bfloat16():
    if not kernels.load().gemm_bf16_supported():
        pytest.skip("no bfloat16 dot products on this CPU")
    x, w, b = _case(16, 4, 3, 2, 2, True, dtype=torch.float32)
    want = versatile_conv2d_reference(x.double(), w.double(), b.double(), 1, 1, True, 2, 2)
    got = NativeVersatile(w, b, True, 2, 2, dtype=torch.bfloat16)(x.bfloat16(), (1, 1), (1, 1, 1, 1), (1, 1))
    assert got.dtype == torch.bfloat16
    # bfloat16 inputs and weights (8 significant bits), float32 sums of 144 products
    err = (got.double() - want).abs().max() / want.abs().max()
    assert err < 2e-2


@native
def test_native_propagates_nan_through_relu():
    x, w, b = _case(16, 4, 3, 2, 2, True, dtype=torch.float32)
    x[0, 3, 4, 4] = float("nan")   # NaN reaches every output that reads it, through ReLU too
    got = NativeVersatile(w, b, True, 2, 2)(x, (1, 1), (1, 1, 1, 1), (1, 1), ("relu", 0.0, 0.0))
    want = versatile_conv2d(x, w, b, padding=1, delta=2, g=2).relu()
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()


@native
def test_layer_inference_runs_native_and_follows_weight_updates():
    torch.manual_seed(0)
    layer = VersatileConv2d(16, 32, 3, padding=1, delta=2, g=2)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        y = layer(x)
        assert y.is_contiguous(memory_format=torch.channels_last)        # the native kernel's output
        torch.testing.assert_close(y, versatile_conv2d(x, layer.weight, layer.bias, 1, 1, True, 2, 2),
                                   rtol=1e-5, atol=1e-5)
        layer.weight.mul_(2)                                             # the packed copy follows
        torch.testing.assert_close(layer(x), versatile_conv2d(x, layer.weight, layer.bias, 1, 1, True, 2, 2),
                                   rtol=1e-5, atol=1e-5)
    layer(x).sum().backward()                                            # training: autograd form
    assert layer.weight.grad is not None


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_optimize_folds_batchnorm_into_native_versatile(dtype, tmp_path):
    if dtype == torch.bfloat16 and not kernels.load().gemm_bf16_supported():
        pytest.skip("no bfloat16 dot products on this CPU")
    torch.manual_seed(0)
    # (delta = g = 2: bfloat16 packs k by pairs, so every call of the program starts at an even
    # column; an odd start is refused, below)
    net = nn.Sequential(VersatileConv2d(8, 16, 3, padding=1, bias=False, delta=2, g=2), nn.BatchNorm2d(16),
                        nn.ReLU(), VersatileConv2d(16, 32, 1, spatial=False, delta=2, g=2), nn.BatchNorm2d(32))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    net.eval()
    x = torch.randn(2, 8, 10, 10)
    opt = sepconv.optimize_for_inference(net, x, dtype=dtype)
    rows = [r for r in opt.report.rows if r["op"].startswith("versatile")]
    assert len(rows) == 2 and opt.report.folded_batchnorms == 2
    assert "native versatile" in rows[0]["became"] and "batch norm + ReLU fused" in rows[0]["became"]
    with torch.no_grad():
        want = net(x)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=5e-2, atol=1e-1)
    torch.testing.assert_close(opt(x).float(), want, **tol)
    sepconv.convert.save(opt, tmp_path / "v.pt")
    torch.testing.assert_close(sepconv.convert.load(tmp_path / "v.pt")(x), opt(x), rtol=0, atol=0)
    if dtype == torch.bfloat16:
        odd = nn.Sequential(VersatileConv2d(8, 16, 3, padding=1, delta=1, g=1)).eval()
        row = sepconv.optimize_for_inference(odd, x, dtype=dtype).report.rows[0]
        assert row["became"] == "ATen (bfloat16: a sub-filter starts at an odd column)"


# ------------------------------------------------------------------------------ zoo

def test_versatile_resnet50_v2_and_vgg16_parameter_counts():
    def n_params(m):
        return sum(p.numel() for p in m.parameters())

    resnet = create_model("resnet50")
    assert n_params(resnet) == 25_557_032                 # He et al. 2016 (torchvision: 25,557,032)
    # v2: every bottleneck conv (downsample included) keeps 1/2 of its filters for the two
    # channel windows, and the 3x3 ones 1/2 again for the 3x3 + 1x1 sub-filters: the 3x3
    # weights shrink by 3/4, the 1x1 by 1/2; BN, stem and classifier are unchanged
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d) and m.in_channels != 3]
    k3 = sum(m.weight.numel() for m in convs if m.kernel_size == (3, 3))
    k1 = sum(m.weight.numel() for m in convs if m.kernel_size == (1, 1))
    versatile = create_model("resnet50_versatile")
    assert n_params(versatile) == 25_557_032 - 3 * k3 // 4 - k1 // 2 == 11_004_968   # paper: 11.0M
    subs = {(m.kernel_size[0], m.secondary) for m in versatile.modules() if isinstance(m, VersatileConv2d)}
    assert subs == {(3, 4), (1, 2)}

    vgg = create_model("vgg16")
    # 13 bias-free 3x3 convs + BN (gamma, beta) + three FC layers with bias
    cfg = [c for c in vgg.CFG if c != "M"]
    cins = [3] + cfg[:-1]
    convs = sum(9 * a * b for a, b in zip(cins, cfg))
    fcs = 512 * 49 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert n_params(vgg) == convs + 2 * sum(cfg) + fcs
    assert n_params(create_model("vgg16_versatile")) == n_params(vgg) - (convs - 9 * 3 * 64) // 2


@pytest.mark.parametrize("name", ["mobilenet_v1_small_versatile"])
def test_zoo_versatile_net_inference_matches_training_form(name):
    torch.manual_seed(0)
    m = create_model(name).eval()
    x = torch.randn(2, *m.input_shape) if hasattr(m, "input_shape") else torch.randn(2, 1, 8, 8)
    want = m(x)                                  # grad enabled: the autograd (crops) form
    with torch.no_grad():
        torch.testing.assert_close(m(x), want.detach(), rtol=1e-4, atol=1e-4)


def test_all_sizes_in_itertools_product_are_valid():
    # every (k, spatial, delta, g) the layer accepts has a program whose blocks cover its outputs
    for k, spatial, (c, delta, g) in itertools.product([1, 3, 5, 7], [True, False], [(8, 0, 1), (8, 2, 1), (12, 6, 3)]):
        runs, calls, blocks = native_program(c, k, spatial, delta, g)
        assert blocks == ((k + 1) // 2 if spatial else 1) * (delta // g + 1)
        assert {q[2] for q in calls} == set(range(blocks))
