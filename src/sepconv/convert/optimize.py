"""`optimize_for_inference`: any model that torch.export can capture, run on sepconv's kernels.

The model is captured as an ATen graph and lowered (:mod:`sepconv.convert.graph`): batch norms
folded, depthwise convolutions on the native kernel, 1x1 convolutions and linear layers on the
native GEMM with packed weights, activations, layer scales and residual adds fused, all in
channels_last; where a per-layer alternative exists (ATen's oneDNN convolution or linear,
which uses AMX on CPUs that have it), the faster on this machine and input is kept. A model
that cannot be captured gets a module-level rewrite instead. The report says, per layer, what
it became, and what was left and why.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.utils import _pytree as pytree

from .. import kernels
from .._validation import fail
from ..timing import Candidate, compare
from . import program
from .graph import CaptureError, Lowering, aten_subgraph, capture
from .trees import float_leaves, leaves as _leaves

_DTYPES = (torch.float32, torch.bfloat16)


@dataclass
class OptimizationReport:
    """What :func:`optimize_for_inference` did: how the model was captured, per layer what it
    became (``rows``: layer, op, became, and what was measured), batch norms folded, layers
    left to ATen and why, the output difference against the model in float32 and float64,
    and (with ``measure=True``) latencies."""

    dtype: str
    captured: str
    rows: list[dict] = field(default_factory=list)
    folded_batchnorms: int = 0
    seconds: float = 0.0
    max_abs_diff: float | None = None
    rel_diff_vs_float64: float | None = None
    latency_ms_eager: float | None = None
    latency_ms_optimized: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def native(self) -> int:
        return sum(r.get("became", "").startswith("native") for r in self.rows)

    @property
    def left(self) -> list[dict]:
        """Layers that did not become a native kernel, each with the reason."""
        return [r for r in self.rows if not r.get("became", "").startswith("native")]

    def __str__(self) -> str:
        lines = [f"optimize_for_inference ({self.dtype}): {self.captured}; {self.native} of {len(self.rows)} layers "
                 f"native, {self.folded_batchnorms} batch norms folded, {self.seconds:.1f} s"]
        if self.max_abs_diff is not None:
            lines.append(f"  output vs eager: max abs diff {self.max_abs_diff:.3g}; relative to float64 "
                         f"{self.rel_diff_vs_float64:.3g}")
        if self.latency_ms_optimized is not None:
            lines.append(f"  latency {self.latency_ms_eager:.3f} ms eager -> {self.latency_ms_optimized:.3f} ms")
        lines += [f"  note: {n}" for n in self.notes]
        for r in self.rows:
            extra = "".join(f"; {k} {v}" for k, v in r.items() if k not in ("layer", "op", "became"))
            lines.append(f"  {r['layer']}: {r['op']} -> {r.get('became', '?')}{extra}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _signature(args, kwargs):
    leaves, spec = _leaves(args, kwargs)
    return (spec, tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else (type(x), x) for x in leaves))


def _to_compute(tree, dtype):
    """Floating-point tensors to the compute dtype, 4-D ones channels_last."""
    return pytree.tree_map(lambda x: _compute_tensor(x, dtype), tree)


def _compute_tensor(x, dtype):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return x
    # (one converting copy, not a cast and then a layout change)
    return x.to(dtype=dtype, memory_format=torch.channels_last) if x.dim() == 4 else x.to(dtype)


def _raw_inputs(gm: fx.GraphModule) -> tuple:
    """Per input of the graph: whether only conv_direct steps read it. They take a float32 or
    bfloat16 tensor in any layout, so such an input (a user's NCHW image before the stem) goes
    in as it is, without the copy that converts it to the compute dtype and channels_last."""
    C = kernels.load()
    return tuple(bool(n.users) and all(u.target is C.conv_direct for u in n.users)
                 for n in gm.graph.nodes if n.op == "placeholder")


def _input(x, dtype, raw: bool):
    if raw and isinstance(x, torch.Tensor) and x.dim() == 4 and x.dtype in _DTYPES:
        return x
    return _compute_tensor(x, dtype)


def _fast_key(args, kwargs):
    """The key of a call whose inputs are tensors only, given by position (the common case,
    served without pytrees), or None."""
    if kwargs or not all(isinstance(a, torch.Tensor) for a in args):
        return None
    return tuple((a.shape, a.dtype, a.device) for a in args)


class OptimizedModel(nn.Module):
    """An inference model from :func:`optimize_for_inference`: call it as the original (same
    arguments, same output pytree). Inputs are converted to the compute dtype and
    channels_last, outputs come back in the input's floating dtype. A call with other input
    shapes than the plans made so far re-plans (once per shape, with a warning) while the
    original model is at hand; a loaded model runs the shapes it was saved with.

    Attributes: ``report`` (:class:`OptimizationReport` of the first plan), ``dtype``, and
    ``executor``: ``"program"`` (the default) runs each plan as one native call
    (:mod:`sepconv.convert.program`: no Python per layer, activations in a planned arena),
    ``"graph"`` runs the plan's fx graph node by node in Python.
    """

    def __init__(self, model: nn.Module | None, dtype: torch.dtype, tune: bool):
        super().__init__()
        self.dtype, self.tune = dtype, tune
        self._source = [model]          # (a list: not a submodule, so its weights are not ours)
        self.plans = nn.ModuleDict()    # graph modules by input signature
        self._keys: dict = {}
        self.report: OptimizationReport | None = None
        self.loaded_report: str | None = None   # a loaded model's report, as text
        self.executor = "program"
        self._programs: dict = {}       # plan name -> its ProgramRunner (None: the graph runs in Python)
        self._fast: dict = {}           # _fast_key -> (ProgramRunner, output dtype, _raw_inputs)

    def train(self, mode: bool = True):
        """An inference model has no training mode: model.eval() and model.train() change
        nothing (the exported plans refuse mode changes)."""
        self.training = False
        return self

    def _plan_for(self, args, kwargs) -> str:
        """The name of the plan for these inputs' signature, made if there is none yet."""
        sig = _signature(args, kwargs)
        name = self._keys.get(sig)
        if name is not None:
            return name
        if self._source[0] is None:
            shapes = [s for s, _ in sig[1]]
            fail("OptimizedModel", "a loaded model runs the input shapes it was optimized for; optimize the "
                 "original model again for others.", f"inputs {shapes}")
        t0 = time.perf_counter()
        gm, report = _plan(self._source[0], args, kwargs, self.dtype, self.tune)
        if self.report is None:
            self.report = report
        else:
            warnings.warn(f"sepconv: re-planned for new input shapes {[s for s, _ in sig[1]]} "
                          f"in {time.perf_counter() - t0:.1f} s.", RuntimeWarning, stacklevel=3)
        name = f"plan{len(self.plans)}"
        self.plans[name] = gm
        self._keys[sig] = name
        return name

    def forward(self, *args, **kwargs):
        key = _fast_key(args, kwargs)
        fast = self._fast.get(key) if key is not None and self.executor == "program" else None
        if fast is not None:
            runner, out_dtype, raw = fast
            with torch.inference_mode():
                out = runner([_input(a, self.dtype, r) for a, r in zip(args, raw)])
                if isinstance(out, torch.Tensor):
                    return out.to(out_dtype) if out.is_floating_point() else out
                return pytree.tree_map(
                    lambda y: y.to(out_dtype) if isinstance(y, torch.Tensor) and y.is_floating_point() else y, out)
        with torch.inference_mode():
            leaves, _ = _leaves(args, kwargs)
            out_dtype = next((x.dtype for x in leaves if isinstance(x, torch.Tensor) and x.is_floating_point()), None)
            name = self._plan_for(args, kwargs)
            gm = self.plans[name]
            cargs, ckwargs = _to_compute((args, kwargs), self.dtype)
            if self.executor == "graph" or not isinstance(gm, fx.GraphModule):   # (a module-level rewrite)
                out = gm(*cargs, **ckwargs)
            elif name not in self._programs:   # the first call records the graph and builds its Program
                self._programs[name], out = program.build(gm, cargs, ckwargs)
                if key is not None and self._programs[name] is not None and out_dtype is not None:
                    # tensors by position flatten to themselves: later calls go straight to the Program
                    self._fast[key] = (self._programs[name], out_dtype, _raw_inputs(gm))
            elif self._programs[name] is None:
                out = gm(*cargs, **ckwargs)
            else:
                out = self._programs[name](program.flat_inputs(gm, cargs, ckwargs))
            if out_dtype is None:
                return out
            return pytree.tree_map(
                lambda y: y.to(out_dtype) if isinstance(y, torch.Tensor) and y.is_floating_point() else y, out)


def _plan(model, args, kwargs, dtype, tune) -> tuple[fx.GraphModule, OptimizationReport]:
    t0 = time.perf_counter()
    try:
        ep = capture(model, args, kwargs)
    except CaptureError as e:
        gm, report = _module_rewrite(model, dtype, str(e))
    else:
        low = Lowering(ep, dtype)
        gm = low.run()
        report = OptimizationReport(str(dtype).replace("torch.", ""), "captured with torch.export", low.rows,
                                    low.folded_bn)
        flat, _ = _leaves(*_to_compute((args, kwargs), dtype))
        for node, value in zip([n for n in gm.graph.nodes if n.op == "placeholder"], flat):
            node.meta["example"] = value
        if tune and kernels.is_available():
            _choose_backends(gm, dtype)
        if kernels.is_available():
            _fuse_pairs(gm, tune)
        for node in gm.graph.nodes:   # (the float32 weights were kept for the measured choice only)
            node.meta.pop("step", None)
            node.meta.pop("example", None)
    report.seconds = time.perf_counter() - t0
    return gm, report


# ---------------------------------------------------------------- measured backend choice

def _record_args(gm: fx.GraphModule, targets) -> dict:
    """The argument values of each node calling one of `targets`, on the example inputs."""
    calls: dict = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node.op == "call_function" and node.target in targets:
                calls[node] = self.map_nodes_to_values(node.args, node)
            return out

    with torch.inference_mode():
        Recorder(gm).run(*[n.meta["example"] for n in gm.graph.nodes if n.op == "placeholder"])
    return calls


# How much faster an ATen layer must time to replace a native one. Timed alone, its separate
# activation and residual passes find their operands in cache; in the model they do not, and
# they leave the Program's arena (MobileNetV2 at batch 8 in bfloat16: a ReLU6 pass after a stem
# that timed 1.05x faster on ATen cost 0.6 ms there).
ATEN_MARGIN = 1.15


def _choose_backends(gm: fx.GraphModule, dtype) -> None:
    """Time each native GEMM of the graph against the ATen convolution or linear layer that
    computes the same (oneDNN: AMX on CPUs with it) on the layer's real input, and keep the
    faster (interleaved medians; ATen must be ATEN_MARGIN faster to replace the native kernel).
    Depthwise layers stay native: a 5% margin is within this timing's noise on a loaded
    machine, and a plan that moved a depthwise layer to ATen under load stayed there."""
    C = kernels.load()
    with torch.inference_mode():
        for node, args in _record_args(gm, (C.gemm, C.conv_gemm, C.conv_direct)).items():
            step, row = node.meta["step"], node.meta["row"]
            if step.kscale:   # (no ATen twin of the scaled input's GEMM: it stays native)
                continue
            residual = None if node.target is C.conv_direct else args[4]
            sub = _aten_callable(step, args[0].dtype)

            def aten_faster(a=args) -> bool:
                cands = compare([Candidate("native", lambda: node.target(*a)),
                                 Candidate("aten", lambda: sub(a[0], residual))], rounds=12, warmup=2, budget_s=0.25)
                t = {c.name: c.median for c in cands}
                row["native_ms"], row["aten_ms"] = round(t["native"] * 1e3, 4), round(t["aten"] * 1e3, 4)
                return t["aten"] * ATEN_MARGIN < t["native"]

            # (twice: a burst of load on a shared machine had moved an EfficientNet expansion to
            # ATen, whose separate SiLU pass then cost 0.8 ms at batch 8)
            if aten_faster() and aten_faster():
                new = aten_subgraph(gm, node, step, node.args[0], None if residual is None else node.args[4], dtype)
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
                row["became"] = "ATen " + ("linear" if step.kind == "gemm" and not step.conv else "convolution") + \
                    " (measured faster here)"
    gm.graph.eliminate_dead_code()
    gm.recompile()


# Without timing, an intermediate of this size or more is fused away: it would not stay in the
# caches (this Xeon, 2 MiB of L2 per core: depthwise -> 1x1 fused measured 1.1-1.45x on
# MobileNetV1's 6-13 MB outputs at batch 8, and 0.8-1.05x on 0.2-3 MB ones).
FUSE_BYTES = 4 << 20


def _plain_1x1(node, C) -> bool:
    """A native 1x1 convolution with neither a residual nor a scaled input."""
    return node.target is C.gemm and node.args[5] and len(node.args) == 12 and node.args[4] is None


def _fusions(C):
    """(producer, consumer, fused op, its arguments from theirs, what each report row says): a
    1x1 expansion and the depthwise convolution reading it (gemm_dw: MobileNetV2's and
    EfficientNet's inverted residuals, whose expanded tensor is 6x the block's input), then a
    depthwise convolution and the 1x1 convolution reading it (dw_gemm)."""
    return [(C.gemm, C.depthwise_hwc, C.gemm_dw, lambda g, d: (*g[:4], *g[6:9], *d[1:9]),
             "the depthwise convolution after it", "the 1x1 convolution before it"),
            (C.depthwise_hwc, C.gemm, C.dw_gemm, lambda d, g: (*d[:9], *g[1:5], *g[6:12]),
             "the 1x1 convolution after it", "the depthwise convolution before it")]


def _as_program(steps, x):
    """A callable running `steps` ((op, arguments), each taking the previous output first) on x
    as a Program, its intermediates in the Program's arena as they are in the model's: timed
    outside one, every call faulted in fresh pages for them, which made fusing look faster
    than it is (MobileNetV1 at batch 8: 3.1 ms fused where ONNX Runtime takes 2.5 for the two)."""
    graph = fx.Graph()
    value = graph.placeholder("x")
    for op, args in steps:
        value = graph.call_function(op, (value, *args[1:]))
    graph.output(value)
    graph._codegen = _PyTreeCodeGen(_PyTreeInfo(["x"], pytree.tree_flatten(((x,), {}))[1],
                                                pytree.tree_flatten(x)[1]))
    runner, _ = program.build(fx.GraphModule(nn.Module(), graph), (x,), {})
    return lambda: runner([x])


def _fuse_pairs(gm: fx.GraphModule, tune: bool) -> None:
    """Each producer -> consumer pair of _fusions (the producer's output read by the consumer
    alone, the 1x1 convolution plain) becomes one fused call, where that measures 5% faster on
    the layers' input, each form run as a Program (with `tune`), or where the intermediate
    tensor exceeds FUSE_BYTES."""
    C = kernels.load()
    for producer, consumer, fused_op, fuse, note_producer, note_consumer in _fusions(C):
        pairs = [(n.args[0], n) for n in gm.graph.nodes
                 if n.op == "call_function" and n.target is consumer and isinstance(n.args[0], fx.Node)
                 and n.args[0].target is producer and len(n.args[0].users) == 1
                 and _plain_1x1(n if consumer is C.gemm else n.args[0], C)]
        if not pairs:
            continue
        recorded = _record_args(gm, (producer, consumer)) if tune else {}
        for first, second in pairs:
            gemm = second if consumer is C.gemm else first
            row = gemm.meta["row"]
            if tune:
                a, b = recorded[first], recorded[second]
                with torch.inference_mode():
                    cands = compare([Candidate("separate", _as_program([(producer, a), (consumer, b)], a[0])),
                                     Candidate("fused", _as_program([(fused_op, fuse(a, b))], a[0]))],
                                    rounds=12, warmup=2, budget_s=0.25)
                t = {c.name: c.median for c in cands}
                row["separate_ms"], row["fused_ms"] = round(t["separate"] * 1e3, 4), round(t["fused"] * 1e3, 4)
                if not t["fused"] * 1.05 < t["separate"]:
                    continue
            else:
                val = first.meta.get("val")
                if val is None or val.numel() * val.element_size() < FUSE_BYTES:
                    continue
            with gm.graph.inserting_before(second):
                fused = gm.graph.call_function(fused_op, fuse(first.args, second.args))
            fused.meta.update({k: gemm.meta[k] for k in ("row", "gemm_k") if k in gemm.meta})
            fused.meta["val"] = second.meta.get("val")
            second.replace_all_uses_with(fused)
            gm.graph.erase_node(second)
            gm.graph.erase_node(first)
            row["became"] += ", fused with " + (note_producer if gemm is first else note_consumer)
            other = second if gemm is first else first
            if "row" in other.meta:
                other.meta["row"]["became"] += ", fused with " + (note_consumer if gemm is first else note_producer)
    gm.recompile()


def _aten_callable(step, dtype):
    """A function of (x, residual) computing `step` with ATen ops (for timing)."""
    w = step.weight.reshape(step.weight.shape + ((1, 1) if step.conv else ())) if step.kind == "gemm" else step.weight
    w, b = w.to(dtype), None if step.bias is None else step.bias.to(dtype)
    top, bottom, left, right = step.pad

    def run(x, residual):
        if step.kind == "gemm":
            y = F.conv2d(x, w, b) if step.conv else F.linear(x, w, b)
        else:
            if (top, left) != (bottom, right):
                x = F.pad(x, [left, right, top, bottom])
            y = F.conv2d(x, w, b, step.stride, [top, left] if (top, left) == (bottom, right) else 0, step.dilation,
                         w.shape[0] if step.kind == "depthwise" else 1)
        y = _apply(y, step.act1)
        if residual is not None:
            y = y + residual
        return _apply(y, step.act2)
    return run


def _apply(y, act):
    kind, lo, hi = act
    return {"none": lambda t: t, "relu": F.relu, "clamp": lambda t: F.hardtanh(t, lo, hi), "silu": F.silu,
            "hardswish": F.hardswish, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
            "sigmoid": torch.sigmoid}[kind](y)


# ---------------------------------------------------------------- module-level rewrite

class NativeDepthwise(nn.Module):
    """A depthwise nn.Conv2d (one filter per channel, zero padding) on the native kernel with
    its weight transposed once. Inference only. Shapes: as the convolution."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        C = kernels.load()
        self.register_buffer("weight_hwc", C.weight_hwc(conv.weight.detach()))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float())
        ph, pw = conv._reversed_padding_repeated_twice[2], conv._reversed_padding_repeated_twice[0]
        self.args = (list(conv.stride), [ph, conv._reversed_padding_repeated_twice[3], pw,
                                         conv._reversed_padding_repeated_twice[1]], list(conv.dilation))

    def forward(self, x):
        return kernels.load().depthwise_hwc(x, self.weight_hwc, self.bias, *self.args, "none", 0.0, 0.0)


class NativeGemm(nn.Module):
    """A 1x1 nn.Conv2d or nn.Linear on the native GEMM with its weight packed once. Inference
    only. Shapes: as the layer."""

    def __init__(self, layer, dtype):
        super().__init__()
        C = kernels.load()
        w = layer.weight.detach()
        self.n, self.conv = w.shape[0], isinstance(layer, nn.Conv2d)
        self.register_buffer("packed", C.gemm_pack(w.reshape(self.n, -1), dtype == torch.bfloat16))
        self.register_buffer("bias", None if layer.bias is None else C.gemm_bias(layer.bias.detach()))

    def forward(self, x):
        return kernels.load().gemm(x, self.packed, self.n, self.bias, None, self.conv, "none", 0.0, 0.0, "none", 0.0, 0.0)


def _module_rewrite(model, dtype, why) -> tuple[nn.Module, OptimizationReport]:
    from .surgery import fold_batchnorm

    report = OptimizationReport(str(dtype).replace("torch.", ""), f"not captured ({why}); module-level rewrite")
    folded, fold_report = fold_batchnorm(model)
    report.folded_batchnorms = len(fold_report.layers)
    report.notes.append("batch norms are folded only where they follow a convolution inside nn.Sequential or a "
                        "sepconv block, and nothing is fused: capture the model with torch.export for more")
    new = copy.deepcopy(folded).eval().to(dtype=dtype, memory_format=torch.channels_last)
    native = kernels.is_available()
    gemm_ok = native and (dtype == torch.float32 or kernels.load().gemm_bf16_supported())
    for parent_name, parent in list(new.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            row = {"layer": full, "op": type(child).__name__}
            if isinstance(child, nn.Conv2d):
                k, s, g = child.kernel_size, child.stride, child.groups
                row["op"] = f"conv {k[0]}x{k[1]}/s{s[0]}" + (f" groups={g}" if g > 1 else "")
                if (native and g == child.in_channels == child.out_channels and g > 1
                        and child.padding_mode == "zeros"):
                    setattr(parent, name, NativeDepthwise(child))
                    row["became"] = "native depthwise"
                elif gemm_ok and k == (1, 1) and s == (1, 1) and g == 1 and child.padding in ((0, 0), "valid"):
                    setattr(parent, name, NativeGemm(child, dtype))
                    row["became"] = "native GEMM (weight packed)"
                else:
                    row["became"] = "ATen convolution"
                report.rows.append(row)
            elif isinstance(child, nn.Linear):
                if gemm_ok:
                    setattr(parent, name, NativeGemm(child, dtype))
                    row["became"] = "native GEMM (weight packed)"
                else:
                    row["became"] = "ATen linear"
                report.rows.append(row)
    for p in new.parameters():
        p.requires_grad_(False)
    return new, report


# ---------------------------------------------------------------- entry point

def optimize_for_inference(model: nn.Module, example_input, dtype: torch.dtype = torch.float32, *,
                           example_kwargs: dict | None = None, tune: bool = True,
                           measure: bool = False) -> OptimizedModel:
    """An inference copy of `model` on sepconv's kernels, for CPU.

    Args:
        model: any nn.Module (put in eval mode for the copy; the model itself is not changed).
        example_input: a tensor, or a tuple of positional arguments, as the model takes them.
        dtype: ``torch.float32`` or ``torch.bfloat16`` (weights and activations in bfloat16,
            float32 accumulation; AVX512-BF16 dot products where the CPU has them, ATen's
            oneDNN otherwise). Outputs come back in the input's dtype.
        example_kwargs: keyword arguments of the example call.
        tune: time each native GEMM against ATen's convolution/linear on its real input and
            keep the faster (a few seconds; False keeps the native kernels).
        measure: also time the eager model and the optimized one (in the report).

    Returns:
        An :class:`OptimizedModel`, called like `model`; its ``report`` says what each layer
        became and why some stayed ATen. ``save(model, path)`` / ``load(path)`` keep it.

    Example:
        >>> from sepconv.models import create_model
        >>> m = create_model("mobilenet_v1_small", alpha=0.25).eval()
        >>> fast = optimize_for_inference(m, torch.randn(1, 1, 8, 8), tune=False)
        >>> fast(torch.randn(1, 1, 8, 8)).shape
        torch.Size([1, 10])
        >>> fast.report.folded_batchnorms
        11
    """
    if dtype not in _DTYPES:
        fail("optimize_for_inference", "`dtype` must be torch.float32 or torch.bfloat16.", f"dtype={dtype!r}")
    if not isinstance(model, nn.Module):
        fail("optimize_for_inference", "`model` must be an nn.Module.", f"type {type(model).__name__}", TypeError)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    kwargs = dict(example_kwargs or {})
    leaves, _ = _leaves(args, kwargs)
    if not any(isinstance(x, torch.Tensor) for x in leaves):
        fail("optimize_for_inference", "`example_input` must contain a tensor.", f"{type(example_input).__name__}",
             TypeError)
    source = copy.deepcopy(model).eval().float()
    with torch.no_grad():
        try:
            want = source(*args, **kwargs)
        except Exception as e:
            fail("optimize_for_inference", "the model must run on `example_input`.",
                 f"{type(e).__name__}: {next(iter(str(e).splitlines()), '')}")
    registered = _register_dataclasses((args, kwargs, want))
    optimized = OptimizedModel(source, dtype, tune)
    got = optimized(*args, **kwargs)
    report = optimized.report
    report.notes += [f"registered the dataclass {name} with torch.export so that it could be captured"
                     for name in registered]
    if dtype == torch.bfloat16 and not kernels.has_bf16_gemm():
        # without bfloat16 dot products ATen converts every operand: several times float32's time
        note = ("this CPU has no bfloat16 dot products (AVX512-BF16 or AMX): bfloat16 runs on ATen's "
                "conversions and is usually slower than float32 here")
        report.notes.append(note)
        warnings.warn(f"optimize_for_inference: {note}.", RuntimeWarning, stacklevel=2)
    _compare(report, source, args, kwargs, want, got)
    if measure:
        from ..timing import median_seconds

        with torch.inference_mode():
            report.latency_ms_eager = median_seconds(lambda: source(*args, **kwargs), runs=20) * 1e3
            report.latency_ms_optimized = median_seconds(lambda: optimized(*args, **kwargs), runs=20) * 1e3
    return optimized


def _register_dataclasses(tree) -> list[str]:
    """Register the dataclasses found in `tree` (and inside them) with torch.export, as its
    documentation asks users to, so that a model returning one can be captured. Returns their
    names."""
    names = []
    while True:
        found = [type(leaf) for leaf in pytree.tree_leaves(tree)
                 if dataclasses.is_dataclass(leaf) and not isinstance(leaf, type)]
        if not found:
            return names
        for cls in dict.fromkeys(found):
            torch.export.register_dataclass(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")
            names.append(cls.__qualname__)


def _compare(report, source, args, kwargs, want, got) -> None:
    """Max abs difference to the eager float32 outputs, and the largest difference to the
    float64 outputs relative to their largest value."""
    to64 = lambda t: pytree.tree_map(lambda x: x.double() if isinstance(x, torch.Tensor) and x.is_floating_point()
                                     else x, t)
    pairs = [(w, g) for w, g in zip(float_leaves(want), float_leaves(got)) if w.numel()]
    if not pairs:
        return
    report.max_abs_diff = max((w.float() - g.float()).abs().max().item() for w, g in pairs)
    with torch.no_grad():
        want64 = float_leaves(copy.deepcopy(source).double()(*to64(args), **to64(kwargs)))
    report.rel_diff_vs_float64 = max(((g.double() - w).abs().max() / w.abs().max().clamp_min(1e-30)).item()
                                     for w, (_, g) in zip(want64, pairs))
