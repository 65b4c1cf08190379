"""optimize_for_inference on any model: graph capture, batch-norm folding in every layout,
native kernels with fused epilogues, NaN like eager, output pytrees, the report, save/load,
and bad input. References: the same model in eager float64 (and float32), F.conv2d + the
activation."""

import copy
import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sepconv import kernels
from sepconv.convert import load, optimize_for_inference, save
from sepconv.models import create_model

pytestmark = pytest.mark.skipif(not kernels.is_available(), reason="native kernels unavailable")


def _with_statistics(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            if mod.affine:
                mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
    return model.eval()


def _rel_to_float64(model, x, got):
    with torch.no_grad():
        want = copy.deepcopy(model).double()(x.double())
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def _plan(fast):
    return next(iter(fast.plans.values()))


def _ops(fast):
    return [str(getattr(n.target, "__name__", n.target)) for n in _plan(fast).graph.nodes if n.op == "call_function"]


# ------------------------------------------------------------------------ batch-norm folding

class BNAttributes(nn.Module):
    """Conv and BN held as attributes, the activation called in forward (torchvision style)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.dw, self.dw_bn = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.BatchNorm2d(16)
        self.fc, self.fc_bn = nn.Linear(16, 10), nn.BatchNorm1d(10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu6(self.dw_bn(self.dw(x)))
        return self.fc_bn(self.fc(x.mean((2, 3))))


class BNFunctional(nn.Module):
    """Weights as parameters, BN as a functional call with its statistics as buffers."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 1, 5, 5) * 0.2)
        self.register_buffer("mean", torch.randn(16) * 0.1)
        self.register_buffer("var", torch.rand(16) + 0.5)
        self.gamma, self.beta = nn.Parameter(torch.rand(16) + 0.5), nn.Parameter(torch.randn(16) * 0.1)
        self.pw = nn.Parameter(torch.randn(24, 16, 1, 1) * 0.2)

    def forward(self, x):
        y = F.conv2d(x, self.w, None, 1, 2, 1, 16)
        y = F.silu(F.batch_norm(y, self.mean, self.var, self.gamma, self.beta, False, 0.1, 1e-3))
        return F.conv2d(y, self.pw)


@pytest.mark.parametrize("build, channels, folded", [
    (BNAttributes, 8, 3),
    (lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                           nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.Hardswish()), 8, 2),
    (BNFunctional, 16, 1),
], ids=["attributes", "sequential", "functional"])
def test_batchnorm_folds_in_every_layout(build, channels, folded):
    torch.manual_seed(0)
    model = _with_statistics(build())
    x = torch.randn(2, channels, 9, 11)
    fast = optimize_for_inference(model, x, tune=False)
    assert fast.report.folded_batchnorms == folded
    assert not any("batch_norm" in op for op in _ops(fast)), _ops(fast)
    assert _rel_to_float64(model, x, fast(x)) < 1e-5


def test_batchnorm_not_after_a_convolution_becomes_scale_and_shift():
    model = _with_statistics(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.BatchNorm2d(4)))
    x = torch.randn(1, 4, 5, 5)
    fast = optimize_for_inference(model, x, tune=False)
    assert fast.report.folded_batchnorms == 0
    assert any(r["op"].startswith("BatchNorm") and "scale and shift" in r["became"] for r in fast.report.rows)
    assert _rel_to_float64(model, x, fast(x)) < 1e-5


# ------------------------------------------------------------------------------------ zoo

ZOO = ["mobilenet_v1_100", "mobilenet_v2_100", "efficientnet_b0", "tf_efficientnet_b0", "convnext_tiny"]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_float32_matches_float64_and_every_depthwise_runs_native(name):
    model = _with_statistics(create_model(name))
    x = torch.randn(2, 3, 64, 64)
    fast = optimize_for_inference(model, x, tune=name == "mobilenet_v2_100")
    rel = _rel_to_float64(model, x, fast(x))
    assert rel < 1e-5, rel
    depthwise = [r for r in fast.report.rows if re.search(r"groups=(\d+) \1->\1", r["op"])]
    assert depthwise and all(r["became"].startswith("native depthwise") for r in depthwise), depthwise
    # (with tune=True a layer whose ATen twin timed faster, as happens under load, is ATen)
    assert all(r["became"].startswith(("native", "ATen convolution (measured", "ATen linear (measured"))
               for r in fast.report.rows), fast.report.left


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_squeeze_excitation_scale_goes_into_the_projection(dtype):
    # EfficientNet-B0's 16 blocks each scale the depthwise output by their gate, then project:
    # no product of the two goes through memory (no ATen mul left), the result as eager's
    if dtype == torch.bfloat16 and not kernels.has_bf16_gemm():
        pytest.skip("no bfloat16 GEMM on this CPU")
    model = _with_statistics(create_model("efficientnet_b0"))
    x = torch.randn(2, 3, 64, 64)
    fast = optimize_for_inference(model, x, dtype, tune=False)
    assert sum("input scale" in r for r in fast.report.rows) == 16, str(fast.report)
    assert not any(op.startswith("mul") for op in _ops(fast)), _ops(fast)
    if dtype == torch.float32:
        assert _rel_to_float64(model, x, fast(x)) < 1e-5


@pytest.mark.parametrize("name", ["mobilenet_v1_100", "mobilenet_v2_100", "efficientnet_b0", "convnext_tiny"])
def test_zoo_bfloat16_is_as_accurate_as_pytorch_bfloat16(name):
    model = _with_statistics(create_model(name))
    x = torch.randn(2, 3, 64, 64)
    fast = optimize_for_inference(model, x, torch.bfloat16, tune=False)
    got = fast(x)
    assert got.dtype == torch.float32                       # a drop-in for float32 callers
    with torch.no_grad():
        want = copy.deepcopy(model).double()(x.double())
        theirs = copy.deepcopy(model).bfloat16()(x.bfloat16()).double()
    ours, reference = (got.double() - want).abs().max(), (theirs - want).abs().max()
    # BN folding moves roundings: within 2x of PyTorch's own bfloat16 run of the model
    assert ours <= 2 * reference, (ours, reference)


# --------------------------------------------------------------------- fused activations

ACTS = [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-1.0, 2.0), nn.SiLU(), nn.Hardswish(), nn.GELU(), nn.GELU("tanh"),
        nn.Sigmoid()]


class Fusions(nn.Module):
    """A depthwise, a 1x1, a dense and a linear layer, each followed by `act`."""

    def __init__(self, act):
        super().__init__()
        self.act = act
        self.dw, self.pw = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 24, 1)
        self.dense, self.fc = nn.Conv2d(24, 8, 3, stride=2, padding=1), nn.Linear(8, 6)

    def forward(self, x):
        y = self.act(self.dense(self.act(self.pw(self.act(self.dw(x))))))
        return self.act(self.fc(y.permute(0, 2, 3, 1)))


@pytest.mark.parametrize("act", ACTS, ids=lambda a: repr(a))
def test_fused_activations_match_eager_and_propagate_nan(act):
    torch.manual_seed(0)
    model = Fusions(act).eval()
    x = torch.randn(2, 16, 10, 9) * 3
    x[0, 3, 4, 4], x[1, 5, 0, 0], x[1, 7, 2, 3] = float("nan"), float("inf"), -float("inf")
    fast = optimize_for_inference(model, x, tune=False)
    assert fast.report.native == 4 and all("fused" in r["became"] for r in fast.report.rows), str(fast.report)
    with torch.no_grad():
        want = model(x)
    got = fast(x)
    assert torch.equal(torch.isnan(got), torch.isnan(want))            # NaN where eager has NaN
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ACTS, ids=lambda a: repr(a))
def test_stem_runs_direct_from_the_nchw_input_with_its_activation(act):
    # a convolution of 3 channels runs as conv_direct, reading the float32 NCHW input as it is
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), act).eval()
    x = torch.randn(2, 3, 21, 18) * 3
    x[0, 1, 4, 4], x[1, 2, 0, 0], x[1, 0, 9, 3] = float("nan"), float("inf"), -float("inf")
    fast = optimize_for_inference(model, x, tune=False)
    (row,) = fast.report.rows
    assert row["became"].startswith("native direct convolution") and "fused" in row["became"], str(fast.report)
    with torch.no_grad():   # (float64: ATen's vectorised float32 GELU makes GELU(inf) NaN, its scalar path inf)
        want = model.double()(x.double())
    for _ in range(2):   # the first call builds the Program; later ones pass the input unconverted
        got = fast(x)
        assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.equal(torch.isinf(got), torch.isinf(want))
        finite = torch.isfinite(want)
        torch.testing.assert_close(got[finite], want[finite].float(), rtol=1e-5, atol=1e-5)
    assert [raw for _, _, raw in fast._fast.values()] == [(True,)]


def test_residual_and_layer_scale_fuse_into_the_gemm():
    model = _with_statistics(create_model("convnext_atto"))
    x = torch.randn(1, 3, 64, 64)
    fast = optimize_for_inference(model, x, tune=False)
    rows = {r["layer"]: r for r in fast.report.rows}
    assert "residual add fused" in rows["features.1.0.pwconv2"]["became"]
    assert "scale" in rows["features.1.0.pwconv2"] and "GELU fused" in rows["features.1.0.pwconv1"]["became"]
    assert "mul.Tensor" not in _ops(fast) and "add.Tensor" not in _ops(fast), _ops(fast)
    assert _rel_to_float64(model, x, fast(x)) < 1e-5


# ------------------------------------------------------------------------ outputs, report

@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    features: torch.Tensor


class Heads(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x, scale=1.0):
        f = self.body(x)
        logits = self.fc(f.mean((2, 3))) * scale
        if self.form == "dict":
            return {"logits": logits, "aux": [f, (logits,)]}
        return Output(logits, f)


@pytest.mark.parametrize("form", ["dict", "dataclass"])
def test_outputs_come_back_in_their_own_form(form):
    torch.manual_seed(0)
    model = Heads(form).eval()
    x = torch.randn(2, 3, 8, 8)
    fast = optimize_for_inference(model, (x,), example_kwargs={"scale": 2.0}, tune=False)
    assert fast.report.captured == "captured with torch.export"
    got = fast(x, scale=2.0)
    with torch.no_grad():
        want = model(x, scale=2.0)
    if form == "dict":
        assert set(got) == {"logits", "aux"} and isinstance(got["aux"][1], tuple)
        torch.testing.assert_close(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["aux"][0], want["aux"][0], rtol=1e-5, atol=1e-5)
    else:
        assert isinstance(got, Output)
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.features, want.features, rtol=1e-5, atol=1e-5)


def test_report_says_what_each_layer_became_and_why_some_stayed():
    model = nn.Sequential(nn.Conv2d(8, 16, 5, stride=2, padding=2, groups=8),   # depth multiplier 2
                          nn.Conv2d(16, 16, 3, padding=1, groups=4),            # grouped
                          nn.Conv2d(16, 16, 5, stride=2, padding=2, groups=16), nn.SiLU(),
                          nn.Conv2d(16, 32, 1)).eval()
    x = torch.randn(1, 8, 16, 16)
    fast = optimize_for_inference(model, x, tune=False)
    text = str(fast.report)
    isa = kernels.isa()
    assert "captured with torch.export" in text
    assert "0: conv 5x5/s2 groups=8 8->16 -> ATen (depthwise with depth multiplier 2" in text
    assert "1: conv 3x3/s1 groups=4 16->16 -> ATen (oneDNN convolution): grouped, not depthwise" in text
    assert f"2: conv 5x5/s2 groups=16 16->16 -> native depthwise {isa}:f32_5x5s2, SiLU fused" in text
    assert "4: conv 1x1/s1 16->32 -> native GEMM (weight packed)" in text
    assert [r["layer"] for r in fast.report.left] == ["0", "1"]
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------- save, load, shapes

def test_save_and_load_without_optimizing_again(tmp_path):
    for dtype in (torch.float32, torch.bfloat16):
        model = _with_statistics(create_model("tf_efficientnet_b0"))
        x = torch.randn(1, 3, 48, 48)
        fast = optimize_for_inference(model, x, dtype, tune=False)
        save(fast, tmp_path / "m.pt")
        loaded = load(tmp_path / "m.pt")
        assert torch.equal(loaded(x), fast(x))
        assert "native depthwise" in loaded.loaded_report
        with pytest.raises(ValueError, match=r"a loaded model runs the input shapes it was optimized for.*"
                                             r"Received: inputs \[\(1, 3, 32, 32\)\]"):
            loaded(torch.randn(1, 3, 32, 32))
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"load: the file must be an optimized model written by sepconv"):
        load(tmp_path / "bad.pt")


def test_another_input_shape_is_planned_again_with_a_warning():
    model = _with_statistics(create_model("mobilenet_v2_050"))
    fast = optimize_for_inference(model, torch.randn(1, 3, 64, 64), tune=False)
    x = torch.randn(3, 3, 96, 80)
    with pytest.warns(RuntimeWarning, match=r"re-planned for new input shapes \[\(3, 3, 96, 80\)\]"):
        got = fast(x)
    assert _rel_to_float64(model, x, got) < 1e-5
    assert len(fast.plans) == 2


# ----------------------------------------------------------------------------- bad input

class DataDependent(nn.Module):
    """Control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.BatchNorm2d(3), nn.Linear(3, 2)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        if y.sum() > 0:
            y = y * 2
        return self.fc(y.mean((2, 3)))


def test_a_model_export_cannot_capture_gets_a_module_rewrite():
    model = _with_statistics(DataDependent())
    x = torch.randn(2, 3, 8, 8)
    fast = optimize_for_inference(model, x, tune=False)
    assert fast.report.captured.startswith("not captured (") and "module-level rewrite" in fast.report.captured
    assert {r["became"] for r in fast.report.rows} == {"native depthwise", "native GEMM (weight packed)"}
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, exc, match", [
    (lambda m: optimize_for_inference(m, torch.randn(1, 1, 8, 8), torch.float16), ValueError,
     r"`dtype` must be torch.float32 or torch.bfloat16. Received: dtype=torch.float16"),
    (lambda m: optimize_for_inference(lambda x: x, torch.randn(1, 1, 8, 8)), TypeError,
     r"`model` must be an nn.Module. Received: type function"),
    (lambda m: optimize_for_inference(m, torch.randn(1, 3, 8, 8)), ValueError,
     r"the model must run on `example_input`. Received: RuntimeError: "),
    (lambda m: optimize_for_inference(m, "an image"), TypeError, r"`example_input` must contain a tensor"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(create_model("mobilenet_v1_small", alpha=0.25).eval())


def test_a_large_depthwise_output_fuses_into_the_pointwise_after_it(tmp_path):
    # 64 x 160 x 160 float32 = 6.5 MB of depthwise output (over FUSE_BYTES): one dw_gemm call,
    # whose result is the two layers', and which saves and loads
    from sepconv.convert.optimize import FUSE_BYTES

    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU6(),
                          nn.Conv2d(64, 48, 1), nn.ReLU()).eval()
    _with_statistics(model)
    x = torch.randn(1, 64, 160, 160)
    assert 64 * 160 * 160 * 4 >= FUSE_BYTES
    fast = optimize_for_inference(model, x, tune=False)
    assert "dw_gemm" in _ops(fast) and "depthwise_hwc" not in _ops(fast)
    assert fast.report.rows[1]["became"].endswith("fused with the depthwise convolution before it")
    assert _rel_to_float64(model, x, fast(x)) < 1e-5
    save(fast, tmp_path / "f.pt")
    assert torch.equal(load(tmp_path / "f.pt")(x), fast(x))
