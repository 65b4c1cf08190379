import csv
import io
import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import sepconv
from sepconv import algorithms
from sepconv.analysis import count, mobilenet_table2, mobilenet_hand_count
from sepconv.cli import main
from sepconv.convert import to_standard
from sepconv.models import create_model
from sepconv.models.mobilenet import MOBILENET_V1_TABLE


def mobilenet_v1_closed_form(size=224, classes=1000):
    """MACs and parameters of MobileNetV1 (padded 3x3 convs, out = ceil(in / stride)) by hand."""
    out = -(-size // 2)
    macs = out * out * 3 * 3 * 3 * 32                 # first conv 3 -> 32, stride 2
    params = 3 * 3 * 3 * 32 + 2 * 32                  # its weight + BN gamma/beta
    cin = 32
    for cout, stride in MOBILENET_V1_TABLE:
        out = -(-out // stride)
        macs += out * out * (9 * cin + cin * cout)    # depthwise + pointwise
        params += 9 * cin + 2 * cin + cin * cout + 2 * cout
        cin = cout
    macs += cin * classes                             # classifier
    params += cin * classes + classes
    return macs, params


def test_mobilenet_v1_224_matches_closed_form_and_reference_figures():
    r = count(create_model("mobilenet_v1").eval(), torch.randn(1, 3, 224, 224))
    macs, params = mobilenet_v1_closed_form()
    assert (r.total.macs, r.total.params) == (macs, params)
    assert r.total.params == 4_231_976 and round(r.total.macs / 1e6, 1) == 568.7
    assert r.total.flops == 2 * r.total.macs
    assert r.unsupported == {}


@pytest.mark.parametrize("alpha,size", [(0.5, 160), (0.25, 128)])
def test_width_and_resolution_multipliers(alpha, size):
    m = create_model(f"mobilenet_v1_{int(alpha * 100):03d}").eval()
    r = count(m, torch.randn(1, 3, size, size))
    with algorithms.forced("reference"), FlopCounterMode(display=False) as fc:
        m(torch.randn(1, 3, size, size))
    assert r.total.macs == fc.get_total_flops() // 2  # torch's counter agrees (it counts FLOPs = 2 MACs)


def test_mobilenet_hand_count_reproduces_the_classic_calculation():
    t = mobilenet_hand_count(160)
    assert t["standard_macs"] == 1_045_417_824
    assert t["separable_macs"] == 126_373_376
    assert round(t["ratio"], 4) == 0.1209
    # layer 0 by hand: out = round(158 / 2) = 79, 79^2 * 9 * 3 * 32
    assert t["rows"][0]["standard_macs"] == 79 * 79 * 9 * 3 * 32


def test_table2_breakdown():
    r = count(create_model("mobilenet_v1").eval(), torch.randn(1, 3, 224, 224))
    t2 = mobilenet_table2(r)
    assert round(t2["conv 1x1"]["mac_share"] * 100, 2) == 94.86        # paper: 94.86%
    assert round(t2["conv 1x1"]["param_share"] * 100, 1) == 74.6        # paper: 74.59%
    assert round(t2["depthwise conv 3x3"]["mac_share"] * 100, 2) == 3.06  # paper: 3.06%
    assert round(t2["fully connected"]["param_share"] * 100, 1) == 24.3   # paper: 24.33%


def test_grouped_and_depthwise_convs_exact():
    x = torch.randn(2, 8, 10, 10)
    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False)
    # 2 images * 16 outputs * 10*10 positions * (8/4 inputs * 9 taps)
    assert count(grouped, x).total.macs == 2 * 16 * 100 * 2 * 9
    dw = sepconv.DepthwiseConv2d(8, 16, 3, stride=2, padding=1)
    # 2 * 16 outputs * 5*5 positions * 9 taps
    assert count(dw, x).total.macs == 2 * 16 * 25 * 9
    assert count(dw, x).total.params == 16 * 9 + 16


def test_functional_calls_are_seen_and_bytes_counted():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 1, 3, 3))

        def forward(self, x):
            return sepconv.depthwise_conv2d(x, self.w, padding=1, algorithm="native")

    x = torch.randn(1, 4, 6, 6)
    r = count(Functional(), x)
    assert r.total.macs == 4 * 36 * 9
    conv_bytes = (x.numel() + 36 + 4 * 36) * 4  # input, weight, output (float32)
    assert r.total.bytes >= conv_bytes
    assert r.total.intensity == pytest.approx(r.total.flops / r.total.bytes)


def test_linear_and_unsupported_ops_are_reported():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(torch.fft.fft(x).real)

    r = count(Odd(), torch.randn(5, 8))
    assert r.total.macs == 5 * 8 * 3
    assert any("fft" in op for op in r.unsupported), r.unsupported


def test_compare_standard():
    m = create_model("mobilenet_v1").eval()
    s = count(to_standard(m).eval(), torch.randn(1, 3, 224, 224))
    # standard form by hand: every separable layer becomes out^2 * 9 * C_in * C_out
    out, cin, macs = 112, 32, 112 * 112 * 27 * 32
    for cout, stride in MOBILENET_V1_TABLE:
        out = -(-out // stride)
        macs += out * out * 9 * cin * cout
        cin = cout
    assert s.total.macs == macs + 1024 * 1000


def test_json_csv_and_tree():
    r = count(create_model("mobilenet_v1_small").eval(), torch.randn(1, 1, 8, 8))
    data = json.loads(r.to_json())
    assert data["total"]["macs"] == r.total.macs
    rows = list(csv.DictReader(io.StringIO(r.to_csv())))
    assert rows[-1]["name"] == "total"
    assert sum(int(row["macs"]) for row in rows[:-1]) == r.total.macs
    assert r.tree["features"].macs + r.tree["classifier"].macs == r.total.macs


def test_cli_cost(capsys):
    assert main(["cost", "mobilenet_v1", "--input", "224"]) == 0
    out = capsys.readouterr().out
    assert "4,231,976 parameters" in out and "568.7M" in out
    assert main(["cost", "--hand-count", "--input", "160"]) == 0
    out = capsys.readouterr().out
    assert "1,045,417,824" in out and "126,373,376" in out and "0.1209" in out
    assert main(["cost", "vgg16", "--input", "32"]) == 0
    assert "138,361,768 parameters" in capsys.readouterr().out
    assert main(["cost", "mobilenet_v2"]) == 1
    assert "Did you mean" in capsys.readouterr().err


class _InferenceWrapper(nn.Module):
    """A model whose own forward enters inference mode, as inference wrappers do."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.inference_mode():
            return self.inner(x)


def _summary(r):
    return (r.total.as_dict(), [c.as_dict() for c in r.layers], {k: c.as_dict() for k, c in r.kinds.items()},
            r.unsupported)


@pytest.mark.parametrize("wrap", [False, True])
def test_count_is_the_same_in_every_grad_mode(wrap):
    # inference mode skips autograd's dispatch keys, which is where composite ops (conv2d,
    # linear, batch_norm) are split into the ops that have cost formulas
    model = create_model("mobilenet_v1_small").eval()
    model = _InferenceWrapper(model) if wrap else model
    x = torch.randn(2, 1, 16, 16)
    with torch.enable_grad():
        expected = _summary(count(model, x))
    assert expected[0]["macs"] > 0 and expected[3] == {}
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            assert _summary(count(model, x)) == expected, mode.__name__
    if wrap:   # the wrapper adds nothing to the cost
        inner = count(model.inner, x).total
        assert [expected[0][k] for k in ("macs", "bytes", "params")] == [inner.macs, inner.bytes, inner.params]
