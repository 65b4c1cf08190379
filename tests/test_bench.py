"""The layer benchmark on a tiny shape: every candidate's output checked, tables written."""

import json

import pytest
import torch

from sepconv.bench import layers


def test_layer_benchmark_checks_every_candidate_and_writes_its_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(tmp_path / "cache"))
    rows = layers.bench_layers(batches=[1], strides=(1, 2), shapes=[(16, 9)], rounds=3, progress=lambda s: None)
    assert [(r["stride"], r["channels"], r["size"]) for r in rows] == [(1, 16, 9), (2, 16, 9)]
    for r in rows:
        assert {"torch_nchw", "torch_channels_last", "reference", "auto"} <= set(r["results"])
        assert all(v["output_ok"] for v in r["results"].values()), r["results"]
        assert r["auto_choice"] in r["results"]
        # 1 x 16 x 9 x 9 in, 16 x 5 x 5 (stride 2) or 9 x 9 out, 16 x 3 x 3 weights, float32
        out = 81 if r["stride"] == 1 else 25
        want_bytes = 4 * (16 * 81 + 16 * out + 16 * 9)
        res = r["results"]["reference"]
        assert abs(res["GB_s"] * res["median_ms"] * 1e6 - want_bytes) < 1e-6 * want_bytes
    summary = layers.write(rows, tmp_path)
    assert summary["batch 1"]["min_auto_speedup"] <= summary["batch 1"]["geomean_auto_speedup"]
    assert summary["copy_GB_s"] > 0
    table = (tmp_path / "depthwise_forward_speedups.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and "auto GB/s (copy)" in table[0]
    assert json.loads((tmp_path / "depthwise_forward.json").read_text())["rows"] == rows



def test_training_traffic_adds_the_backward_pass():
    from sepconv.spec import depthwise_spec

    x, w = torch.empty(2, 8, 10, 10), torch.empty(8, 1, 3, 3, requires_grad=True)
    spec = depthwise_spec("t", x, w, None, 2, 1, 1)
    # x: 1600, y: 2*8*5*5 = 400, w: 72 elements; forward x + y + w, training 3x + 2y + 3w
    assert layers.depthwise_traffic(spec) == (4 * (1600 + 400 + 72), 2 * 400 * 9)
    assert layers.depthwise_traffic(spec, training=True) == (4 * (4800 + 800 + 216), 3 * 2 * 400 * 9)


def test_compare_drops_slow_candidates_and_times_the_rest_afresh():
    import time

    from sepconv.timing import Candidate, compare

    calls = {"fast": 0, "other": 0}

    def counted(name):
        def fn():
            calls[name] += 1
        return fn

    slow = Candidate("slow", lambda: time.sleep(0.005))   # thousands of times the no-ops
    fast, other = Candidate("fast", counted("fast")), Candidate("other", counted("other"))
    compare([slow, fast, other], rounds=8, warmup=1, drop_after=3)
    assert slow.dropped and len(slow.times) == 3            # its first rounds are kept
    # the survivors' samples are the 5 rounds after the drop, though they ran 1 + 8 times
    assert not fast.dropped and len(fast.times) == len(other.times) == 5
    assert calls == {"fast": 9, "other": 9}
    # with no round left after the drop, the samples taken so far are kept
    quick = Candidate("quick", lambda: None)
    compare([quick], rounds=3, warmup=0, drop_after=3)
    assert len(quick.times) == 3
    # an exhausted budget still leaves min_rounds samples after the drop
    quick = Candidate("quick", lambda: None)
    compare([quick], rounds=20, warmup=0, drop_after=3, budget_s=0.0, min_rounds=2)
    assert len(quick.times) == 2


def test_profile_blocks_name_the_models_modules():
    from sepconv.bench.profile import block_of, onnx_module_path

    assert block_of("features.3.depthwise") == "features.3"
    assert block_of("blocks.2.1.conv_pw") == "blocks.2.1"
    assert block_of("stages.1.blocks.2.conv_dw") == "stages.1.blocks.2"
    assert block_of("features.0.2") == "features.0"
    assert onnx_module_path("/features/features.1/conv/conv.0/conv.0.0/Conv") == "features.1.conv.0.0"
    assert onnx_module_path("ReorderInput") == ""
    # a fusion's op name appended as a scope is cut back to the model's module
    fused = "/features/features.2/block/block.0/block.0.2/Mul/QuickGeluFusion/"
    modules = {"features", "features.2", "features.2.block", "features.2.block.0", "features.2.block.0.2"}
    assert onnx_module_path(fused) == "features.2.block.0.2.Mul"
    assert onnx_module_path(fused, modules) == "features.2.block.0.2"
    assert block_of(onnx_module_path(fused, modules)) == "features.2"


def test_program_steps_name_their_layers_when_aten_serves_them():
    """Each step of the Program names the model's layer it computes, ATen ops inserted by the
    lowering included (never a graph node name such as "conv2d_default"); an op of the model's
    own forward is named by its node ("mean")."""
    from torch import nn

    from sepconv.convert import optimize_for_inference

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.SiLU())
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.stem(x).mean((2, 3)))

    torch.manual_seed(0)
    m = optimize_for_inference(Net().eval(), torch.randn(2, 3, 16, 16))
    if not m._programs:
        pytest.skip("no native kernels: no Program")
    (runner,) = m._programs.values()
    layers = {layer for layer, _ in runner.layers}
    assert layers <= {"stem.0", "stem.1", "stem.2", "head", "mean"}, layers
    assert "head" in layers and "stem.0" in layers
