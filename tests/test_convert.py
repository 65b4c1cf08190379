import copy

import pytest
import torch
from torch import nn

import sepconv
from sepconv.analysis import count
from sepconv.convert import decompose, fold_batchnorm, to_separable, to_versatile
from sepconv.functional.versatile import versatile_conv2d, versatile_conv2d_reference
from sepconv.layers import SpatiallySeparableConv2d, VersatileConv2d
from sepconv.models import create_model


# ------------------------------------------------------------------------------ versatile

@pytest.mark.parametrize("c,p,k,delta,g,spatial,stride,pad", [
    (4, 2, 3, 0, 1, True, 1, 1), (6, 3, 5, 2, 2, True, 2, 2), (8, 2, 3, 4, 2, False, 1, 0),
    (8, 2, 1, 6, 2, True, 1, 0), (5, 2, 7, 0, 1, True, 1, 3), (6, 1, 3, 3, 3, True, (2, 1), (0, 1)),
])
def test_versatile_matches_one_masked_conv_per_subfilter(c, p, k, delta, g, spatial, stride, pad):
    x = torch.randn(2, c, 9, 11, dtype=torch.float64)
    w = torch.randn(p, c, k, k, dtype=torch.float64)
    s = (k + 1) // 2 if spatial else 1
    b = torch.randn(p * s * (delta // g + 1), dtype=torch.float64)
    got = versatile_conv2d(x, w, b, stride, pad, spatial, delta, g)
    torch.testing.assert_close(got, versatile_conv2d_reference(x, w, b, stride, pad, spatial, delta, g),
                               rtol=1e-12, atol=1e-12)


def test_versatile_shares_multiplications():
    layer = VersatileConv2d(8, 24, 5, padding=2, bias=False)     # 8 primary filters, 3 sub-filters each
    x = torch.randn(1, 8, 10, 10)
    macs = count(layer, x).total.macs
    # one 5x5 conv per primary filter: 8 filters * 8 inputs * 25 taps * 100 positions
    assert macs == 8 * 8 * 25 * 100
    # one masked conv per sub-filter would take 8 * 8 * (25 + 9 + 1) * 100
    assert macs < 8 * 8 * (25 + 9 + 1) * 100


def test_versatile_parameters_gradcheck_and_errors():
    layer = VersatileConv2d(16, 32, 3, padding=1)
    assert sum(p.numel() for p in layer.parameters()) == 16 * 16 * 9 + 32   # vs 32*16*9 + 32
    small = VersatileConv2d(4, 8, 3, padding=1, delta=2, g=2, dtype=torch.float64)  # 2 spatial x 2 channel
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small, (x,))
    with pytest.raises(ValueError, match=r"`out_channels` must be divisible by the 2 sub-filters .* Received: out_channels=7"):
        VersatileConv2d(4, 7, 3)
    with pytest.raises(ValueError, match=r"`kernel_size` must be odd when `spatial=True`"):
        VersatileConv2d(4, 8, 4)
    with pytest.raises(ValueError, match=r"`g` must divide both `in_channels` and `delta`"):
        VersatileConv2d(6, 8, 3, delta=3, g=2)
    with pytest.raises(ValueError, match=r"`delta` must be an int with 0 <= delta < in_channels"):
        VersatileConv2d(4, 8, 3, delta=4)


# ------------------------------------------------------------------------------ conversions

def _bn_net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      sepconv.DepthwiseSeparableConv2d(8, 8, 3, padding=1, norm_layer=nn.BatchNorm2d,
                                                       act_layer=nn.ReLU))
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_()
    return m.eval()


def test_fold_batchnorm_is_exact_and_removes_every_bn():
    m, x = _bn_net(), torch.randn(2, 4, 9, 9)
    folded, report = fold_batchnorm(m, x)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in folded.modules())
    assert len(report.layers) == 3
    torch.testing.assert_close(folded(x), m(x), rtol=1e-5, atol=1e-5)
    assert report.max_abs_diff < 1e-5
    assert any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())  # input untouched


def test_to_separable_is_exact_for_separable_kernels():
    # A kernel that is separable by construction: W[o, c] = P[o, c] * D[c]
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, padding=1, bias=True)
    pw, dw = torch.randn(10, 6), torch.randn(6, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("oc,cij->ocij", pw, dw))
    x = torch.randn(2, 6, 8, 8)
    m, r = to_separable(nn.Sequential(conv), x)
    assert r.layers[0]["reconstruction_error"] < 1e-5
    torch.testing.assert_close(m(x), conv(x), rtol=1e-4, atol=1e-4)
    assert r.params_after == 6 * 9 + 6 * 10 + 10


def test_to_versatile_and_model_zoo_conversion():
    m = create_model("mobilenet_v1_small_standard").eval()
    x = torch.randn(1, 1, 8, 8)
    v, r = to_versatile(m, x)
    assert len(r.layers) == 6 and r.params_after < r.params_before
    assert v(x).shape == (1, 10)
    s, rs = to_separable(m, x)
    assert rs.macs_after < rs.macs_before / 4


def _small_mobilenet_with_bn_statistics():
    """Non-trivial BN running statistics, so that folding is really exercised."""
    torch.manual_seed(0)
    m = create_model("mobilenet_v1_small", alpha=0.5).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


def test_optimize_for_inference_bfloat16_is_as_accurate_as_pytorch_bfloat16():
    from sepconv.convert import optimize_for_inference

    m = _small_mobilenet_with_bn_statistics()
    x = torch.randn(4, 1, 16, 16)
    fast = optimize_for_inference(m, x, dtype=torch.bfloat16)
    with torch.no_grad():
        want = m.double()(x.double())
        got = fast(x)
        torch_bf16 = copy.deepcopy(m).to(torch.bfloat16)(x.bfloat16()).double()
    assert got.dtype == torch.float32            # a drop-in for float32 callers
    ours, theirs = (got.double() - want).abs().max(), (torch_bf16 - want).abs().max()
    # BN folding changes where roundings happen, so "as accurate" is within a factor of 2 of
    # PyTorch's own bfloat16 inference of the same model, against float64
    assert 0 < ours <= 2 * theirs


def test_optimize_for_inference_rejects_other_dtypes():
    from sepconv.convert import optimize_for_inference

    m = create_model("mobilenet_v1_small").eval()
    with pytest.raises(ValueError, match=r"`dtype` must be torch.float32 or torch.bfloat16.*dtype=torch.float16"):
        optimize_for_inference(m, torch.randn(1, 1, 8, 8), dtype=torch.float16)


def test_versatile_resnet50_and_vgg16_parameter_counts():
    def n_params(m):
        return sum(p.numel() for p in m.parameters())

    resnet = create_model("resnet50")
    assert n_params(resnet) == 25_557_032                 # He et al. 2016 (torchvision: 25,557,032)
    # versatile: every 3x3 conv keeps 1/2 of its filters (3x3 + 1x1 sub-filters), every 1x1 conv
    # (after the stem) 1/4 (four channel windows); BN, stem and FC are unchanged
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d) and m.in_channels != 3]
    k3 = sum(m.weight.numel() for m in convs if m.kernel_size == (3, 3))
    k1 = sum(m.weight.numel() for m in convs if m.kernel_size == (1, 1))
    versatile = n_params(create_model("resnet50_versatile"))
    assert versatile == 25_557_032 - k3 // 2 - 3 * k1 // 4
    assert round(versatile / 1e6, 1) == 10.8              # the paper reports 11.0M (see docs/results.md)

    vgg = create_model("vgg16")
    # 13 bias-free 3x3 convs + BN (gamma, beta) + three FC layers with bias
    cfg = [c for c in vgg.CFG if c != "M"]
    cins = [3] + cfg[:-1]
    convs = sum(9 * a * b for a, b in zip(cins, cfg))
    fcs = 512 * 49 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert n_params(vgg) == convs + 2 * sum(cfg) + fcs
    assert n_params(create_model("vgg16_versatile")) == n_params(vgg) - (convs - 9 * 3 * 64) // 2
