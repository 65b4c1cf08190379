"""Conversions on any model (issue 15): replaced layers keep nn.Conv2d's attributes, string
padding, no decomposition that costs more, every convolution reported (converted or why not),
inputs and outputs of any pytree form, bad arguments; fine-tuning by distillation; the
`sepconv convert` command."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from sepconv.convert import decompose, to_separable, to_versatile
from sepconv.layers import DepthwiseSeparableConv2d, SpatiallySeparableConv2d, VersatileConv2d
from sepconv.models.efficientnet import Conv2dSame
from test_cli import run  # (argv, capsys) -> (exit code, stdout, stderr)

CONVERSIONS = {
    "to_separable": (to_separable, DepthwiseSeparableConv2d),
    "decompose": (lambda m, x=None: decompose(m, rank=1, example_input=x), SpatiallySeparableConv2d),
    "to_versatile": (to_versatile, VersatileConv2d),
}
ATTRIBUTES = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "padding_mode")


class ReadsConvAttributes(nn.Module):
    """Third-party style: forward reads attributes of its convolutions (after conversion too)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.body = nn.Conv2d(8, 16, 5, padding="same", dilation=2, bias=False)
        self.valid = nn.Conv2d(16, 16, (3, 5), padding="valid")
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = self.stem(x)
        # the output size nn.Conv2d's formula gives, from the layer's own attributes
        want = (x.shape[-1] + 2 * self.stem.padding[1] - self.stem.dilation[1] * (self.stem.kernel_size[1] - 1)
                - 1) // self.stem.stride[1] + 1
        y = self.body(y[..., :want])
        border = self.body.dilation[0] * (self.body.kernel_size[0] // 2)
        y = self.valid(y[..., border:, :] if self.body.padding == "same" else y)
        return self.head(y.reshape(len(x), self.valid.out_channels, -1).mean(-1))


@pytest.mark.parametrize("kind", CONVERSIONS)
def test_replaced_layers_keep_conv_attributes_and_model_code_runs(kind):
    convert, cls = CONVERSIONS[kind]
    torch.manual_seed(0)
    m, x = ReadsConvAttributes().eval(), torch.randn(2, 3, 17, 19)
    new, report = convert(m, x)
    replaced = {row["name"] for row in report.layers}
    assert replaced and replaced <= {"stem", "body", "valid"}
    for name in replaced:
        old, layer = getattr(m, name), getattr(new, name)
        assert isinstance(layer, cls)
        assert {a: getattr(layer, a) for a in ATTRIBUTES} == {a: getattr(old, a) for a in ATTRIBUTES}
    assert isinstance(new.stem.stride, tuple) and isinstance(new.stem.kernel_size, tuple)
    assert new(x).shape == m(x).shape == (2, 4)
    assert math.isfinite(report.max_abs_diff)


def _rank_one_kernels(out_c, in_c, kh, kw):
    """Kernels whose (in_c * kh, kw) matrix per output channel has rank 1: decompose(rank=1)
    represents them exactly."""
    a, b = torch.randn(out_c, in_c * kh, 1, dtype=torch.float64), torch.randn(out_c, 1, kw, dtype=torch.float64)
    return (a @ b).reshape(out_c, in_c, kh, kw)


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (4, 1), ((2, 3), 1), (4, 2), ((5, 2), 3)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding_decompose_is_exact(kernel, dilation, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, kernel, padding=padding, dilation=dilation, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(_rank_one_kernels(7, 5, *conv.kernel_size))
    x = torch.randn(2, 5, 13, 12, dtype=torch.float64)
    new, report = decompose(nn.Sequential(conv), rank=1, example_input=x)
    assert isinstance(new[0], SpatiallySeparableConv2d) and new[0].padding == padding
    torch.testing.assert_close(new(x), conv(x), rtol=1e-10, atol=1e-10)
    assert report.max_abs_diff < 1e-10 and report.layers[0]["reconstruction_error"] < 1e-12


@pytest.mark.parametrize("kernel", [3, 4, (3, 4), 5])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding_to_separable_exact_for_separable_kernels_and_to_versatile_same_shape(kernel, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, kernel, padding=padding, dtype=torch.float64)   # 12: 2 or 3 sub-filters each
    kh, kw = conv.kernel_size
    with torch.no_grad():   # W[o, c] = P[o, c] * D[c]: what a depthwise-separable layer expresses
        conv.weight.copy_(torch.einsum("oc,cij->ocij", torch.randn(12, 6, dtype=torch.float64),
                                       torch.randn(6, kh, kw, dtype=torch.float64)))
    x = torch.randn(2, 6, 11, 10, dtype=torch.float64)
    sep, report = to_separable(nn.Sequential(conv), x)
    assert isinstance(sep[0], DepthwiseSeparableConv2d) and sep[0].padding == padding
    torch.testing.assert_close(sep(x), conv(x), rtol=1e-10, atol=1e-10)
    # to_versatile is a warm start (other values), with the original's output shape
    ver, report = to_versatile(nn.Sequential(conv), x)
    if kh == kw and kh % 2:
        assert isinstance(ver[0], VersatileConv2d) and ver(x).shape == conv(x).shape
    else:
        assert report.skipped[0]["reason"].startswith(f"kernel {kh}x{kw} is ")


def test_decompose_never_makes_a_layer_more_expensive():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(96, 192, 2, stride=2), nn.Conv2d(192, 8, 3, padding=1))
    x = torch.randn(1, 96, 56, 56)
    new, report = decompose(m, energy=0.9, example_input=x)
    assert type(new[0]) is nn.Conv2d        # untouched
    (row,) = [r for r in report.skipped if r["name"] == "0"]
    assert row["reason"] == ("SpatiallySeparableConv2d rank 2 (of 2) would cost 116.2M MACs and 74,688 parameters "
                             "vs 57.8M and 73,920")
    # full rank reproduces a kernel but always costs more than it: never applied
    _, full = decompose(m, rank=3, example_input=x)
    assert full.layers == [] and all("would cost" in r["reason"] for r in full.skipped)
    for r in report.layers:
        assert r["params_after"] < r["params_before"] and r["macs_after"] < r["macs_before"]


def test_low_rank_decompose_reports_its_error_and_cost():
    torch.manual_seed(0)
    m, x = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1)), torch.randn(1, 4, 10, 10)
    low, r1 = decompose(m, rank=1, example_input=x)
    # rank 1 of each (C_in*kh) x kw kernel keeps the largest singular value only
    s = torch.linalg.svdvals(m[0].weight.detach().reshape(8, 12, 3))
    want = ((s[:, 1:] ** 2).sum() / (s ** 2).sum()).sqrt().item()
    row = r1.layers[0]
    assert row["reconstruction_error"] == pytest.approx(want, rel=1e-4)
    assert r1.params_after == row["params_after"] == 8 * 1 * 4 * 3 + 8 * 3 + 8  # vertical + horizontal + bias
    assert row["macs_before"] == 8 * 4 * 9 * 100 and row["macs_input"] == [1, 4, 10, 10]
    assert row["macs_after"] == 8 * 4 * 3 * 100 + 8 * 3 * 100
    # without an example input the MACs are those of a nominal 32x32 input
    _, nominal = decompose(m, rank=1)
    assert nominal.layers[0]["macs_input"] == [1, 4, 32, 32] and nominal.macs_before is None


def test_every_convolution_is_reported_converted_or_with_the_reason():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1),            # converted by all three
                      nn.Conv2d(16, 16, 1),                       # 1x1
                      nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
                      nn.Conv2d(16, 16, 3, padding=1, groups=4),   # grouped
                      Conv2dSame(16, 16, 3, 2),                   # TF "same": its own forward
                      nn.Conv2d(16, 15, 3, padding=1)).eval()    # 15 outputs: not 2 per primary
    x = torch.randn(1, 8, 12, 12)
    reasons = {"1": "kernel 1x1 is smaller than", "2": "depthwise (groups=16)", "3": "grouped (groups=4)",
               "4": "Conv2dSame subclasses nn.Conv2d"}
    for kind in CONVERSIONS:
        new, report = CONVERSIONS[kind][0](m, x)
        names = [r["name"] for r in report.layers] + [r["name"] for r in report.skipped]
        assert sorted(names) == ["0", "1", "2", "3", "4", "5"], kind
        skipped = {r["name"]: r["reason"] for r in report.skipped}
        for name, reason in reasons.items():
            assert skipped[name].startswith(reason), (kind, skipped[name])
        assert "0" not in skipped
        text = str(report)
        assert all(f"  {n}: " in text for n in names) and "total parameters" in text
    _, report = to_versatile(m, x)
    assert report.skipped[-1]["reason"] == "out_channels 15 is not a multiple of the 2 sub-filters per primary filter"


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    features: dict


class PytreeModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, image, scale=None):
        f = self.conv(image) * (1 if scale is None else scale)
        pooled = f.mean((2, 3))
        return Out(self.fc(pooled), {"map": f, "pair": (pooled, torch.arange(3))})


@pytest.mark.parametrize("form", ["tensor", "args", "kwargs"])
def test_reports_compare_any_output_pytree_and_take_any_input_form(form):
    torch.manual_seed(0)
    m, x, scale = PytreeModel().eval(), torch.randn(2, 3, 6, 6), torch.tensor(2.0)
    example = {"tensor": x, "args": (x, scale), "kwargs": {"image": x, "scale": scale}}[form]
    new, report = to_separable(m, example)
    args, kwargs = ((example,), {}) if form == "tensor" else ((example, {}) if form == "args" else ((), example))
    with torch.no_grad():
        a, b = m(*args, **kwargs), new(*args, **kwargs)
    want = max((a.logits - b.logits).abs().max(), (a.features["map"] - b.features["map"]).abs().max(),
               (a.features["pair"][0] - b.features["pair"][0]).abs().max()).item()
    assert report.max_abs_diff == pytest.approx(want, rel=1e-6) and report.max_abs_diff > 0
    assert 0 < report.rel_diff < 10 and report.macs_after < report.macs_before


@pytest.mark.parametrize("call, exc, match", [
    (lambda m: decompose(m, energy=0), ValueError, r"decompose: `energy` must be in \(0, 1\]. Received: energy=0"),
    (lambda m: decompose(m, energy=1.5), ValueError, r"Received: energy=1.5"),
    (lambda m: decompose(m, energy=float("nan")), ValueError, r"`energy` must be in \(0, 1\]. Received: energy=nan"),
    (lambda m: decompose(m, energy="0.9"), TypeError, r"`energy` must be a number in \(0, 1\]. Received: energy='0.9'"),
    (lambda m: decompose(m, rank=0), ValueError, r"decompose: `rank` must be a positive int. Received: rank=0"),
    (lambda m: decompose(m, rank=True), ValueError, r"`rank` must be a positive int. Received: rank=True"),
    (lambda m: decompose(m), ValueError, r"give exactly one of `rank` and `energy`"),
    (lambda m: decompose(m, rank=1, energy=0.5), ValueError, r"give exactly one of `rank` and `energy`"),
    (lambda m: to_separable(m, min_kernel=0), ValueError, r"to_separable: `min_kernel` must be >= 1. Received: min_kernel=0"),
    (lambda m: to_versatile(m, g=0), ValueError, r"to_versatile: `g` must be >= 1. Received: g=0"),
    (lambda m: to_versatile(m, delta=-2), ValueError, r"`delta` must be an int >= 0 and a multiple of `g`. Received: delta=-2"),
    (lambda m: to_versatile(m, delta=3, g=2), ValueError, r"Received: delta=3, g=2"),
    (lambda m: to_separable("model"), TypeError, r"to_separable: `model` must be an nn.Module. Received: type str"),
    (lambda m: to_separable(m, [1, 2]), TypeError, r"`example_input` must be a tensor, a tuple of arguments or a dict"),
])
def test_bad_arguments_name_argument_rule_and_value(call, exc, match):
    with pytest.raises(exc, match=match):
        call(nn.Sequential(nn.Conv2d(4, 8, 3)))


# --------------------------------------------------------------------------- fine-tuning

def test_finetune_by_distillation_recovers_accuracy_of_a_damaged_conversion():
    from sepconv.convert import finetune
    from sepconv.data import digits
    from sepconv.train import evaluate, train

    train_set, test_set = digits(8)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    train(teacher, train_set, test_set, epochs=4, progress=False)
    original = evaluate(teacher, test_set)
    student, report = decompose(teacher, rank=1)          # rank 1 of 3: deliberately damaged
    assert len(report.layers) == 2
    damaged = evaluate(student, test_set)
    result = finetune(student, teacher, train_set, test_set, epochs=2, seed=0)
    assert original > 0.6 and damaged < original - 0.1, (original, damaged)
    assert result.test_accuracy > damaged + 0.1, (original, damaged, result.test_accuracy)


def test_finetune_bad_arguments():
    from sepconv.convert import finetune
    from sepconv.data import synthetic

    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    tr, te = synthetic(32, 8)
    with pytest.raises(ValueError, match=r"finetune: `temperature` must be a finite number > 0. Received: temperature=0"):
        finetune(m, m, tr, te, temperature=0)
    with pytest.raises(ValueError, match=r"`hard_label_weight` must be in \[0, 1\]. Received: hard_label_weight=2"):
        finetune(m, m, tr, te, hard_label_weight=2)
    with pytest.raises(ValueError, match=r"train: `epochs` must be >= 1. Received: epochs=0"):
        finetune(m, m, tr, te, epochs=0)


# ------------------------------------------------------------------------- sepconv convert

def test_cli_convert_zoo_model_writes_report_and_a_loadable_model(tmp_path, capsys):
    import json

    from sepconv.convert import load_converted
    from sepconv.models import create_model

    out, js = tmp_path / "m.pt", tmp_path / "r.json"
    code, text, err = run(["convert", "mobilenet_v1_small_standard", "--to", "separable", "--size", "16",
                           "--out", str(out), "--json", str(js)], capsys)
    assert code == 0, err
    report = json.loads(js.read_text())
    assert len(report["layers"]) == 6 and report["params_after"] < report["params_before"]
    assert all(r["reason"] for r in report["skipped"]) and report["max_abs_diff"] is not None
    assert "features.0.0: Conv2d 1->32 3x3 -> DepthwiseSeparableConv2d; params 288 -> 41; MACs" in text
    assert "total MACs" in text and "output difference: max abs" in text
    loaded = load_converted(out)
    torch.manual_seed(0)
    new, _ = to_separable(create_model("mobilenet_v1_small_standard").eval())
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x), new(x))     # same weights (seed 0), same layers
    # the converted file converts again: decompose finds nothing cheaper left and says why
    code, text, err = run(["convert", str(out), "--to", "decompose", "--energy", "0.9", "--size", "16",
                           "--out", str(tmp_path / "m2.pt")], capsys)
    assert code == 0 and "0 layer(s) changed" in text


def test_cli_convert_checkpoint_with_finetune(tmp_path, capsys):
    import json

    code, _, err = run(["train", "mobilenet_v1_small_standard", "--alpha", "0.25", "--size", "8", "--epochs", "2",
                        "--checkpoint-dir", str(tmp_path / "ck"), "--json"], capsys)
    assert code == 0, err
    code, text, err = run(["convert", str(tmp_path / "ck" / "last.pt"), "--to", "decompose", "--rank", "1",
                           "--finetune-epochs", "1", "--out", str(tmp_path / "m.pt"),
                           "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    acc = json.loads((tmp_path / "r.json").read_text())["accuracy"]
    assert set(acc) >= {"original", "converted", "finetuned"} and acc["original"] > 0.3
    assert "test accuracy: original" in text and "after 1 epoch(s) of distillation" in text


@pytest.mark.parametrize("argv,message", [
    (["convert", "mobilenet_v1_small", "--to", "sparse", "--out", "x.pt"], "argument --to: invalid choice: 'sparse'"),
    (["convert", "mobilenet_v1_small", "--to", "decompose", "--energy", "1.5", "--out", "x.pt"],
     "argument --energy: must be a number in (0, 1]. Received: 1.5."),
    (["convert", "mobilenet_v1_small", "--to", "decompose", "--rank", "0", "--out", "x.pt"],
     "argument --rank: must be an integer >= 1. Received: 0."),
    (["convert", "mobilenet_v1_small", "--to", "decompose", "--out", "x.pt", "--size", "16"],
     "decompose: give exactly one of `rank` and `energy`. Received: rank=None, energy=None."),
    (["convert", "mobilenet_v1_small", "--to", "separable", "--rank", "2", "--out", "x.pt"],
     "convert: `--rank` and `--energy` are for `--to decompose`. Received: --to separable."),
    (["convert", "mobilenet_v1_smal", "--to", "separable", "--out", "x.pt"], "Did you mean 'mobilenet_v1_small'"),
    (["convert", "nothere/m.pt", "--to", "separable", "--out", "x.pt"],
     "convert: `MODEL` must be a zoo id or an existing file. Received: nothere/m.pt (no such file)."),
    (["convert", "mobilenet_v1_small", "--to", "separable"], "the following arguments are required: --out"),
])
def test_cli_convert_bad_arguments_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_cli_convert_state_dict_needs_arch(tmp_path, capsys):
    from sepconv.models import create_model

    path = tmp_path / "w.pt"
    torch.save(create_model("mobilenet_v1_small_standard").state_dict(), path)
    code, _, err = run(["convert", str(path), "--to", "versatile", "--out", str(tmp_path / "m.pt")], capsys)
    assert code == 1 and "needs `--arch` naming its zoo model" in err
    code, _, err = run(["convert", str(path), "--to", "versatile", "--arch", "mobilenet_v1_small", "--size", "8",
                        "--out", str(tmp_path / "m.pt")], capsys)
    assert code == 1 and "the weights do not fit mobilenet_v1_small built with its defaults" in err
    code, _, err = run(["convert", str(path), "--to", "versatile", "--arch", "mobilenet_v1_small_standard",
                        "--size", "8", "--out", str(tmp_path / "m.pt")], capsys)
    assert code == 0, err
