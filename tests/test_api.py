"""The public surface: layers that are nn.Conv2d (or carry its attributes), the namespace the
README promises, the command's entry points, and what `import sepconv` costs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import sepconv

ROOT = Path(__file__).resolve().parents[1]
CONV_ATTRIBUTES = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "padding_mode")


def test_depthwise_layer_is_an_nn_conv2d():
    layer = sepconv.DepthwiseConv2d(8, 16, 3, stride=2, padding=1)
    assert isinstance(layer, nn.Conv2d)
    assert layer.groups == 8 and layer.depth_multiplier == 2 and layer.weight.shape == (16, 1, 3, 3)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=(3, 5), stride=2, padding=(1, 2)),
                                    dict(kernel_size=5, dilation=2, padding="same", bias=False)])
def test_state_dict_loads_both_ways_with_grouped_conv2d(kwargs):
    conv = nn.Conv2d(6, 12, groups=6, **kwargs)
    layer = sepconv.DepthwiseConv2d(6, 12, **kwargs)
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, 11, 13)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    torch.manual_seed(1)
    other = sepconv.DepthwiseConv2d(6, 12, **kwargs)
    conv.load_state_dict(other.state_dict())
    torch.testing.assert_close(other(x), conv(x), rtol=1e-5, atol=1e-5)


def test_the_old_signature_fails_loudly_naming_the_new_one():
    # DepthwiseConv2d(32, 3) once meant 32 channels with a 3x3 kernel
    with pytest.raises(ValueError, match=r"DepthwiseConv2d: `out_channels` must be a multiple of `in_channels` "
                                         r"\(the depth multiplier\). The signature is nn.Conv2d's: DepthwiseConv2d\("
                                         r"in_channels, out_channels, kernel_size.*Received: in_channels=32, out_channels=3"):
        sepconv.DepthwiseConv2d(32, 3, 3)
    with pytest.raises(TypeError, match="kernel_size"):
        sepconv.DepthwiseConv2d(32, 3)


@pytest.mark.parametrize("build", [
    lambda **kw: sepconv.DepthwiseConv2d(8, 16, 3, **kw),
    lambda **kw: sepconv.DepthwiseSeparableConv2d(8, 16, 3, **kw),
    lambda **kw: sepconv.SpatiallySeparableConv2d(8, 16, 3, **kw),
    lambda **kw: sepconv.VersatileConv2d(8, 16, 3, **kw),
], ids=["depthwise", "separable", "spatial", "versatile"])
@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding="same", dilation=2),
                                dict(padding=1, padding_mode="reflect")], ids=str)
def test_attributes_are_those_of_the_conv2d_it_replaces(build, kw):
    if kw.get("padding") == "same" and kw.get("stride", 1) != 1:
        pytest.skip("same padding needs stride 1")
    layer, conv = build(**kw), nn.Conv2d(8, 16, 3, **kw)
    for name in CONV_ATTRIBUTES:
        assert getattr(layer, name) == getattr(conv, name), name
    x = torch.randn(1, 8, 12, 10)
    assert layer(x).shape == conv(x).shape


def _public_names(doc: str) -> set[str]:
    text = (ROOT / doc).read_text()
    return set(re.findall(r"(?<![.\w])sepconv((?:\.[A-Za-z_][A-Za-z_0-9]*)+)", text))   # (not torch.ops.sepconv.*)


@pytest.mark.parametrize("doc", ["README.md", "docs/guide.md"])
def test_every_name_the_docs_use_resolves_after_import_sepconv(doc):
    names = sorted(_public_names(doc))
    assert names
    code = "import sepconv\n" + "".join(
        f"obj = sepconv\nfor part in {n[1:].split('.')!r}:\n    obj = getattr(obj, part)\n" for n in names)
    subprocess.run([sys.executable, "-c", code], check=True)   # a fresh process: nothing imported before


def test_import_is_light():
    code = ("import sys, torch; before = set(sys.modules); import sepconv; "
            "print(len(set(sys.modules) - before), 'torch._dynamo' in sys.modules, 'sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert int(out[0]) <= 5 and out[1:] == ["False", "False"], out
    assert set(sepconv.__all__) <= set(dir(sepconv))


def test_python_m_sepconv_and_version():
    run = lambda *a: subprocess.run([sys.executable, "-m", "sepconv", *a], capture_output=True, text=True)
    help_ = run("--help")
    assert help_.returncode == 0 and "usage: sepconv" in help_.stdout and "explain" in help_.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"sepconv {sepconv.__version__}"


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        sepconv.nope
