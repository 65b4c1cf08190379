import copy

import pytest
import torch
from torch import nn

import sepconv
from sepconv.analysis import count
from sepconv.convert import decompose, fold_batchnorm, to_separable, to_versatile
from sepconv.layers import SpatiallySeparableConv2d, VersatileConv2d
from sepconv.models import create_model


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
