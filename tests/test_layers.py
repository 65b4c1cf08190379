import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sepconv
from sepconv import DepthwiseConv2d, DepthwiseSeparableConv2d

ALGOS = [a.name for a in sepconv.list_algorithms()]


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_separable_weight_count_matches_closed_form():
    # depthwise 16 * 3*3 = 144, pointwise 16 * 32 = 512: 656 (nn.Conv2d: 16*32*9 = 4608)
    assert n_params(DepthwiseSeparableConv2d(16, 32, 3, padding=1)) == 656
    assert n_params(nn.Conv2d(16, 32, 3, padding=1, bias=False)) == 4608
    # depth_multiplier 2: 16*2*9 + 32*32 = 1312; bias adds 32 after the pointwise step
    assert n_params(DepthwiseSeparableConv2d(16, 32, 3, depth_multiplier=2, bias=True)) == 1312 + 32


def test_mobilenet_and_xception_blocks_are_one_line():
    mb = DepthwiseSeparableConv2d(8, 16, 3, padding=1, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU)
    xc = DepthwiseSeparableConv2d(8, 16, 3, padding=1, norm_layer=nn.BatchNorm2d,
                                  mid_norm=False, mid_act=False)
    kinds = lambda m: [type(c).__name__ for c in m.children()]
    assert kinds(mb) == ["DepthwiseConv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]
    assert kinds(xc) == ["DepthwiseConv2d", "Identity", "Identity", "Conv2d", "BatchNorm2d", "Identity"]
    x = torch.randn(2, 8, 10, 10)
    mb.eval()
    want = F.relu(mb.pw_norm(mb.pointwise(F.relu(mb.dw_norm(
        F.conv2d(x, mb.depthwise.weight, padding=1, groups=8))))))
    torch.testing.assert_close(mb(x), want, rtol=1e-5, atol=1e-5)


def test_depthwise_layer_is_a_drop_in_for_grouped_conv2d():
    conv = nn.Conv2d(6, 12, (3, 5), stride=2, padding=(1, 2), dilation=1, groups=6)
    layer = DepthwiseConv2d(6, 12, (3, 5), stride=2, padding=(1, 2))
    layer.load_state_dict(conv.state_dict())  # same keys and shapes
    x = torch.randn(2, 6, 11, 13)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_match_conv2d(mode):
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode=mode)
    layer = DepthwiseConv2d(4, 4, 3, padding=1, padding_mode=mode, algorithm="direct")
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(1, 4, 7, 9)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_between_algorithms():
    x = torch.randn(2, 8, 12, 12)
    outs = []
    src = DepthwiseConv2d(8, 8, 3, padding=1, algorithm="reference")
    for name in ALGOS:  # inference, so inference-only algorithms take part too
        layer = DepthwiseConv2d(8, 8, 3, padding=1, algorithm=name)
        layer.load_state_dict(src.state_dict())
        with torch.no_grad():
            outs.append(layer(x))
    for y in outs[1:]:
        torch.testing.assert_close(y, outs[0], rtol=1e-4, atol=1e-4)


def test_extra_repr_shows_only_non_defaults():
    assert repr(DepthwiseConv2d(8, 8, 3)) == "DepthwiseConv2d(8, 8, kernel_size=(3, 3))"
    assert repr(DepthwiseConv2d(8, 16, 5, stride=2, padding=2, bias=False, algorithm="direct")) == (
        "DepthwiseConv2d(8, 16, kernel_size=(5, 5), stride=(2, 2), padding=(2, 2), algorithm='direct', bias=False)")
    assert repr(DepthwiseConv2d(8, 8, 3, padding="same")) == "DepthwiseConv2d(8, 8, kernel_size=(3, 3), padding='same')"
    assert sepconv.DepthwiseSeparableConv2d(8, 16, 3, padding=1).extra_repr() == (
        "8, 16, kernel_size=(3, 3), padding=(1, 1), bias=False")
    assert sepconv.SpatiallySeparableConv2d(8, 16, 3, rank=2).extra_repr() == "8, 16, kernel_size=(3, 3), rank=2"
    assert repr(sepconv.VersatileConv2d(8, 16, 3, dilation=2)) == (
        "VersatileConv2d(8, 16, kernel_size=(3, 3), dilation=(2, 2))")


def test_dtype_and_device_arguments():
    layer = DepthwiseSeparableConv2d(4, 8, 3, dtype=torch.float64, norm_layer=nn.BatchNorm2d)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert layer(torch.randn(1, 4, 6, 6, dtype=torch.float64)).dtype == torch.float64


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    model = nn.Sequential(DepthwiseSeparableConv2d(3, 8, 3, padding=1, norm_layer=nn.BatchNorm2d,
                                                   act_layer=nn.ReLU),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(32, 3, 8, 8)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long()  # learnable: the sign of channel 0's mean
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.5


# ------------------------------------------------------------------- graph capture and export

def _block():
    torch.manual_seed(0)
    return DepthwiseSeparableConv2d(4, 6, 3, padding=1, norm_layer=nn.BatchNorm2d,
                                    act_layer=nn.ReLU).eval()


def test_jit_trace():
    m, x = _block(), torch.randn(1, 4, 9, 9)
    traced = torch.jit.trace(m, x)
    torch.testing.assert_close(traced(x), m(x))


def test_fx_symbolic_trace():
    m, x = _block(), torch.randn(2, 4, 9, 9)
    gm = torch.fx.symbolic_trace(m)
    assert any(n.target is sepconv.functional.depthwise.depthwise_conv2d for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), m(x))


def test_torch_compile():
    m, x = _block(), torch.randn(2, 4, 9, 9)
    compiled = torch.compile(m)
    torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_export_runs_in_onnxruntime(dynamo, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m, x = _block(), torch.randn(1, 4, 9, 9)
    path = tmp_path / "block.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=dynamo, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), m(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("build, exc, match", [
    (lambda: DepthwiseConv2d(8, 8, 3, algorithm="winogard"), ValueError,
     r"DepthwiseConv2d: `algorithm` must be one of .* Did you mean 'winograd_.*Received: algorithm='winogard'"),
    (lambda: DepthwiseConv2d(8, 8, 3, padding=-1), ValueError, r"`padding` must be >= 0. Received: padding=-1"),
    (lambda: DepthwiseConv2d(8, 8, 3, stride=0), ValueError, r"`stride` must be >= 1. Received: stride=0"),
    (lambda: DepthwiseConv2d(8, 8, 3, stride=2, padding="same"), ValueError, r"needs stride 1"),
    (lambda: DepthwiseConv2d(8, 8, 3, padding="full"), ValueError, r"`padding` must be an int, a pair of ints, 'same' or 'valid'"),
    (lambda: DepthwiseConv2d(8, 8, 2.5), TypeError, r"`kernel_size` must be an int or a pair of ints. Received: kernel_size=2.5"),
    (lambda: DepthwiseConv2d(0, 8, 3), ValueError, r"`in_channels` must be >= 1. Received: in_channels=0"),
    (lambda: DepthwiseConv2d(8, 8, 3, padding_mode="zero"), ValueError, r"Did you mean 'zeros'"),
    (lambda: DepthwiseSeparableConv2d(8, 16, 3, norm_layer="bn"), TypeError, r"`norm_layer` must be a callable"),
])
def test_constructor_errors(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


@pytest.mark.parametrize("call, exc, match", [
    (lambda: DepthwiseConv2d(8, 8, 3)(torch.randn(2, 8, 5)), ValueError,
     r"DepthwiseConv2d: `input` must have 8 channels \(dimension -3\). Received: input.shape=\(2, 8, 5\)"),
    (lambda: DepthwiseConv2d(8, 8, 3)(torch.randn(1, 1, 8, 5, 5)), ValueError,
     r"`input` must be 3-D or 4-D. Received: input.shape=\(1, 1, 8, 5, 5\)"),
    (lambda: DepthwiseConv2d(8, 8, 3)(torch.randn(1, 4, 5, 5)), ValueError,
     r"`input` must have 8 channels"),
    (lambda: sepconv.depthwise_conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 1, 3, 3)), ValueError,
     r"must be a positive multiple of the input's 3 channels"),
    (lambda: sepconv.depthwise_conv2d(torch.randn(1, 3, 5, 5), torch.randn(3, 1, 3, 3, dtype=torch.float64)),
     TypeError, r"must have the same dtype. Received: input.dtype=torch.float32, weight.dtype=torch.float64"),
    (lambda: sepconv.depthwise_conv2d(torch.randn(1, 3, 2, 2), torch.randn(3, 1, 3, 3)), ValueError,
     r"output would be empty"),
    (lambda: sepconv.depthwise_conv2d(torch.randn(1, 3, 5, 5), torch.randn(3, 1, 3, 3), stride=2,
                                      algorithm="winograd_f4x4"), ValueError,
     r"depthwise_conv2d: algorithm 'winograd_f4x4' cannot serve this call: `stride` must be one of \[\(1, 1\)\]. Received: stride=\(2, 2\)"),
    (lambda: sepconv.depthwise_conv2d(torch.randn(1, 3, 5, 5), torch.randn(3, 1, 3, 3), algorithm="fast"),
     ValueError, r"`algorithm` must be one of"),
    (lambda: sepconv.depthwise_conv2d(torch.randn(1, 3, 5, 5).int(), torch.randn(3, 1, 3, 3).int()),
     TypeError, r"`input` must be a floating-point tensor"),
    (lambda: sepconv.depthwise_conv2d([[1.0]], torch.randn(3, 1, 3, 3)), TypeError,
     r"`input` must be a torch.Tensor. Received: type list"),
    (lambda: sepconv.depthwise_conv2d(torch.randn(1, 3, 5, 5), torch.randn(3, 1, 3, 3), torch.randn(4)),
     ValueError, r"`bias` must have shape \(3,\)"),
])
def test_call_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("tuned, captured", [
    ("native", "sepconv.depthwise"),          # the eager plan, captured as the registered op
    ("native_winograd_f2x2", "sepconv.winograd"),  # a registered op as well
    (None, "conv2d"),                         # nothing tuned: nothing to time while capturing
])
def test_torch_compile_runs_the_plan_tuned_in_eager_mode(tuned, captured, monkeypatch):
    from sepconv import algorithms

    monkeypatch.setattr(algorithms.tuner, "cached_choice", lambda key: tuned)
    torch._dynamo.reset()
    m = DepthwiseConv2d(16, 16, 3, padding=1).eval()
    x = torch.randn(2, 16, 10, 10).contiguous(memory_format=torch.channels_last)
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes)
        return gm.forward

    with torch.no_grad():
        y = torch.compile(m, fullgraph=True, backend=backend)(x)
    assert any(captured in t for t in targets), targets
    assert (tuned is not None) == any("sepconv" in t for t in targets), targets
    torch.testing.assert_close(y, F.conv2d(x, m.weight, m.bias, padding=1, groups=16), rtol=1e-5, atol=1e-5)
    # torch.export feeds exporters: standard ops only, whatever was tuned
    exported = torch.export.export(m, (x,))
    assert not any("sepconv" in str(n.target) for n in exported.graph.nodes)
