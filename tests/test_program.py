"""The Program an optimized model runs (sepconv.convert.program): the same outputs as its graph
run node by node, bit for bit; no two activations alive at one step share arena bytes;
outputs that outlive the call are never in the arena; concurrent calls; graphs it cannot run
stay graphs."""

import operator
import threading

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from sepconv import kernels
from sepconv.convert import load, optimize_for_inference, program, save
from sepconv.models import create_model

pytestmark = pytest.mark.skipif(not kernels.is_available(), reason="native kernels unavailable")


def _runner(fast):
    (runner,) = fast._programs.values()
    return runner


def _graph_and_program(fast, x):
    fast.executor = "graph"
    want = fast(x)
    fast.executor = "program"
    return want, fast(x)


@pytest.mark.parametrize("name", ["mobilenet_v1_small", "mobilenet_v2_100", "efficientnet_b0", "convnext_tiny"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_program_matches_the_graph_bit_for_bit(name, dtype):
    if dtype == torch.bfloat16 and not kernels.load().gemm_bf16_supported():
        pytest.skip("no bfloat16 GEMM on this CPU")
    kw = {"alpha": 0.25} if name == "mobilenet_v1_small" else {}
    model = create_model(name, **kw).eval()
    channels = 1 if name == "mobilenet_v1_small" else 3
    x = torch.randn(2, channels, 32, 32)
    fast = optimize_for_inference(model, x, dtype, tune=False)
    first = fast(x)                      # the call that records the graph and builds the Program
    runner = _runner(fast)
    assert runner is not None and runner.program.steps > 0 and runner.program.arena_bytes > 0
    for _ in range(2):                   # later calls run the Program (and reuse its arena)
        want, got = _graph_and_program(fast, x)
        assert torch.equal(got, want) and torch.equal(first, want)


def test_outputs_outlive_the_call():
    # a returned tensor (and a view of an activation that is returned) must not be overwritten
    # by the next call's use of the arena
    class TwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.c = nn.Conv2d(16, 8, 1)

        def forward(self, x):
            h = self.a(x)
            return {"hidden": h.flatten(1), "out": self.c(F.relu(self.b(h)))}

    model = TwoOut().eval()
    x1, x2 = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    fast = optimize_for_inference(model, x1, tune=False)
    fast(x1)
    y1 = fast(x1)
    keep = {k: v.clone() for k, v in y1.items()}
    fast(x2)
    for k in y1:
        assert torch.equal(y1[k], keep[k]), k
    with torch.no_grad():
        want = model(x2)
    got = fast(x2)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)


def test_arena_never_overlaps_tensors_alive_together():
    # the Program's arena against lifetimes computed here from the graph: a native output
    # lives from its step to the last step reading it or a view of it (a view of x shares x's
    # storage); blocks alive at one step lie in disjoint bytes
    model = create_model("mobilenet_v2_100").eval()
    x = torch.randn(1, 3, 32, 32)
    fast = optimize_for_inference(model, x, tune=False)
    fast(x)
    arena = _runner(fast).arena
    gm = next(iter(fast.plans.values()))
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    step = {n.name: i for i, n in enumerate(calls)}
    views = {"reshape", "view", "permute", "flatten", "expand"}
    owner = {}
    for n in calls:
        src = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        viewing = getattr(n.target, "__name__", "").split(".")[0] in views and src is not None
        owner[n.name] = owner.get(src.name, src.name) if viewing else n.name
    last = {}
    for n in calls:
        for a in n.all_input_nodes:
            root = owner.get(a.name, a.name)
            last[root] = max(last.get(root, -1), step[n.name])
    assert len(arena) > 20
    for name, _, _, first, end in arena:
        assert (first, end) == (step[name], max(step[name], last.get(name, step[name]))), name
    for a, oa, ba, fa, la in arena:
        for b, ob, bb, fb, lb in arena:
            if a != b and fa <= lb and fb <= la:
                assert oa + ba <= ob or ob + bb <= oa, (a, b)
    assert _runner(fast).program.arena_bytes >= max(o + b for _, o, b, _, _ in arena)


def test_concurrent_calls_are_each_correct():
    model = create_model("mobilenet_v1_small", alpha=0.25).eval()
    xs = [torch.randn(1, 1, 16, 16) for _ in range(4)]
    fast = optimize_for_inference(model, xs[0], tune=False)
    fast(xs[0])
    with torch.no_grad():
        want = [model(x) for x in xs]
    errors = []

    def work(k):
        for _ in range(20):
            got = fast(xs[k])
            if not torch.allclose(got, want[k], rtol=1e-4, atol=1e-5):
                errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_a_graph_with_an_operator_outside_aten_stays_a_graph():
    @torch.library.custom_op("sepconv_test::twice", mutates_args=())
    def twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @twice.register_fake
    def _(x):
        return torch.empty_like(x)

    class UsesCustom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 1)

        def forward(self, x):
            return twice(self.conv(x))

    model = UsesCustom().eval()
    x = torch.randn(1, 4, 5, 5)
    fast = optimize_for_inference(model, x, tune=False)
    got = fast(x)
    assert _runner(fast) is None                    # its kernel is Python: run as an fx graph
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)


def test_a_loaded_model_builds_its_program(tmp_path):
    model = create_model("mobilenet_v1_small", alpha=0.25).eval()
    x = torch.randn(1, 1, 8, 8)
    fast = optimize_for_inference(model, x, tune=False)
    want = fast(x)
    save(fast, tmp_path / "m.pt")
    loaded = load(tmp_path / "m.pt")
    assert torch.equal(loaded(x), want) and torch.equal(loaded(x), want)
    assert _runner(loaded) is not None
