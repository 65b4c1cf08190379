"""Capture a model as an ATen graph and lower it onto sepconv's kernels.

``torch.export`` captures any model it can trace (attributes, Sequential and functional calls
alike, and any output pytree); the lowering then works on the graph, where "a convolution
followed by a batch norm" is a fact about data flow, not module order:

1. batch norms are folded into the convolution or linear layer that feeds them (exactly: the
   float64 fold of the eval statistics), others become a per-channel scale and shift;
2. depthwise convolutions (groups == in_channels, one filter per channel) become the native
   kernel, any kernel size, stride, dilation, with an explicit zero pad before them folded in
   (TensorFlow's asymmetric "same" padding included);
3. 1x1 convolutions and linear layers become the native GEMM with the weight packed once;
4. activations, a per-channel scale after a linear layer (ConvNeXt's layer scale) and a
   residual add are fused into the producing kernel's epilogue;
5. everything else stays the ATen op it was (reported, with the reason).

The result is an fx.GraphModule with the model's own calling convention and output pytree.
Each decision is a row of the report.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from .. import kernels
from ..functional.versatile import NativeVersatile, native_even, versatile_op
from ..kernels.ops import Act

aten = torch.ops.aten

# A dense convolution of at most this many input channels (a stem on RGB) runs as a direct
# implicit GEMM from the input in its own layout (conv_direct), not im2col + GEMM: with 3
# channels the gather took longer than the GEMM.
DIRECT_MAX_CHANNELS = 4


class CaptureError(RuntimeError):
    """The model could not be captured as a graph (the message says why)."""


def capture(model: torch.nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    """The model's inference graph as ATen ops (functional, high-level ops kept)."""
    try:
        with torch.no_grad():
            ep = torch.export.export(model, args, kwargs, strict=False)
        return ep.run_decompositions(decomp_table={})
    except Exception as e:  # export reports failures with many exception types
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise CaptureError(f"{type(e).__name__}: {first}") from e


# activation ops -> Act; hardtanh/clamp take their bounds from the call
_ACTS = {aten.relu.default: "relu", aten.silu.default: "silu", aten.hardswish.default: "hardswish",
         aten.sigmoid.default: "sigmoid"}


def activation_of(node: fx.Node) -> Act | None:
    """The Act a graph node applies, or None if it is not a fusable activation."""
    if node.op != "call_function":
        return None
    if node.target in _ACTS:
        return Act(_ACTS[node.target])
    if node.target is aten.relu6.default:
        return Act("clamp", 0.0, 6.0)
    if node.target is aten.hardtanh.default:
        lo, hi = (list(node.args[1:]) + [-1.0, 1.0][len(node.args) - 1:])[:2]
        return Act("clamp", float(lo), float(hi))
    if node.target is aten.clamp.default:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            return Act("clamp", float(lo), float(hi))
        if isinstance(lo, (int, float)) and hi is None and lo == 0:
            return Act("relu")
        return None
    if node.target is aten.gelu.default:
        approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return Act("gelu" if approximate == "none" else "gelu_tanh")
    return None


@dataclass
class Step:
    """A node that will run on a native kernel, with what was fused into it so far."""

    kind: str                       # "depthwise", "gemm" (1x1 or linear), "conv_gemm" (im2col + gemm), "versatile"
    weight: torch.Tensor            # float32: depthwise (C, 1, kh, kw); gemm (N, K); conv_gemm (N, C, kh, kw);
    bias: torch.Tensor | None       # versatile (P, C, k, k) primary filters

    conv: bool = True               # gemm: a 1x1 convolution (channels at dim 1), else a linear layer
    stride: tuple = (1, 1)
    pad: tuple = (0, 0, 0, 0)       # depthwise, conv_gemm: top, bottom, left, right
    dilation: tuple = (1, 1)
    act1: Act = Act()
    act2: Act = Act()
    residual: bool = False          # the node's kwarg "residual" is added after act1
    kscale: bool = False            # gemm: the input is first scaled by the node's kwarg "kscale" (B, C, 1, 1)
    row: dict = field(default_factory=dict)
    versatile: tuple = ()           # versatile: (spatial, delta, g)
    scale: torch.Tensor | None = None   # versatile: per output channel, before the bias (a batch norm)

    def add_act(self, act: Act) -> bool:
        if self.kind == "depthwise":
            if self.act1.kind != "none":
                return False
            self.act1 = act
        elif not self.residual and self.act1.kind == "none":
            self.act1 = act
        elif self.residual and self.act2.kind == "none":
            self.act2 = act
        else:
            return False
        return True


def add_const(gm: fx.GraphModule, tensor: torch.Tensor, before: fx.Node) -> fx.Node:
    """A new constant of `gm` (a buffer) and the get_attr node reading it, before `before`."""
    i = len(gm._buffers)
    while f"_sepconv_const{i}" in gm._buffers:
        i += 1
    gm.register_buffer(f"_sepconv_const{i}", tensor.detach())
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(f"_sepconv_const{i}")


def aten_subgraph(gm: fx.GraphModule, node: fx.Node, step: Step, x, residual, dtype, kscale=None) -> fx.Node:
    """ATen ops computing what the native `step` at `node` computes (inserted before it):
    act2(act1(conv or linear(x * kscale) + bias) + residual)."""
    graph = gm.graph
    if step.kind == "gemm":
        w = step.weight.reshape(step.weight.shape + ((1, 1) if step.conv else ()))
    else:
        w = step.weight
    w_node = add_const(gm, w.to(dtype), node)
    b_node = None if step.bias is None else add_const(gm, step.bias.to(dtype), node)
    before = set(graph.nodes)
    with graph.inserting_before(node):
        if kscale is not None:
            x = graph.call_function(aten.mul.Tensor, (x, kscale))
        if step.kind == "gemm":
            y = graph.call_function(aten.conv2d.default if step.conv else aten.linear.default, (x, w_node, b_node))
        else:
            top, bottom, left, right = step.pad
            if (top, left) != (bottom, right):
                x = graph.call_function(aten.constant_pad_nd.default, (x, [left, right, top, bottom], 0.0))
                top = left = 0
            groups = w.shape[0] if step.kind == "depthwise" else 1
            y = graph.call_function(aten.conv2d.default, (x, w_node, b_node, list(step.stride), [top, left],
                                                          list(step.dilation), groups))
        if step.act1.kind != "none":
            y = _act_node(graph, y, step.act1)
        if residual is not None:
            y = graph.call_function(aten.add.Tensor, (y, residual))
        if step.act2.kind != "none":
            y = _act_node(graph, y, step.act2)
    layer = module_path(node)
    for n in graph.nodes:
        if n not in before:
            n.meta["layer"] = layer     # profiles and reports name the model's layer, not "conv2d_default"
    return y


def module_path(node: fx.Node) -> str:
    """The path of the model's module a graph node comes from: the layer its report row or the
    lowering names, else its module (its own name if none, or if it is the model's own forward)."""
    if "layer" in node.meta:
        return node.meta["layer"]
    if "row" in node.meta:
        return node.meta["row"]["layer"]
    stack = node.meta.get("nn_module_stack") or {}
    return (next(reversed(stack.values()))[0] if stack else "") or node.name


def _describe_act(act: Act) -> str:
    if act.kind == "clamp":
        return "ReLU6" if (act.lo, act.hi) == (0.0, 6.0) else f"clamp({act.lo:g}, {act.hi:g})"
    return {"relu": "ReLU", "silu": "SiLU", "hardswish": "Hardswish", "gelu": "GELU", "gelu_tanh": "GELU(tanh)",
            "sigmoid": "sigmoid"}[act.kind]


class Lowering:
    """One model's graph (from :func:`capture`) lowered for `dtype` (float32 or bfloat16)."""

    def __init__(self, ep: torch.export.ExportedProgram, dtype: torch.dtype):
        self.gm = ep.module()
        self.graph = self.gm.graph
        self.dtype = dtype
        self.rows: list[dict] = []
        self.folded_bn = 0
        self._consts = 0
        self._native = kernels.is_available()
        self._gemm_bf16 = self._native and kernels.load().gemm_bf16_supported()
        # which bfloat16 GEMM runs: AMX tiles or AVX512-BF16 dot products
        self._bf16_note = f", bfloat16 on {kernels.load().gemm_bf16_kind().upper()}" if self._gemm_bf16 else ""
        for node in list(self.graph.nodes):   # export's shape guards: the wrapper checks shapes itself
            if node.op == "call_module" and node.target == "_guards_fn":
                self.graph.erase_node(node)

    # ------------------------------------------------------------------ constants
    def const(self, node) -> torch.Tensor | None:
        if not isinstance(node, fx.Node) or node.op != "get_attr":
            return None
        obj = self.gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, torch.Tensor) else None

    def add_const(self, tensor: torch.Tensor, before: fx.Node) -> fx.Node:
        return add_const(self.gm, tensor, before)

    # ------------------------------------------------------------------ passes
    def run(self) -> fx.GraphModule:
        self.normalize()
        self.fold_constants()
        self.fold_batchnorm()
        self.lower_layers()
        self.fuse()
        self.materialize()
        self.cast_constants()
        self.graph.eliminate_dead_code()
        self.gm.recompile()
        self._drop_unused_attributes()
        return self.gm

    def normalize(self) -> None:
        """Layout-independent ops: reshape for view (activations may be channels_last, for which
        a view can fail), no clones (the graph is functional)."""
        for node in list(self.graph.nodes):
            if node.op != "call_function":
                continue
            if node.target in (aten.view.default, aten._unsafe_view.default):
                node.target = aten.reshape.default
            elif node.target is aten.clone.default and not node.kwargs.get("memory_format"):
                node.replace_all_uses_with(node.args[0])
                self.graph.erase_node(node)

    def fold_constants(self) -> None:
        """Ops on constants alone (a versatile layer's cropped sub-filter weights, a transposed or
        reshaped weight) computed once here: the layer passes then see plain constant weights."""
        for node in list(self.graph.nodes):
            if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
                continue
            if torch.Tag.nondeterministic_seeded in node.target.tags:
                continue
            inputs = node.all_input_nodes
            if not inputs or any(self.const(n) is None for n in inputs):
                continue
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), self.const)
            with torch.no_grad():
                value = node.target(*args, **kwargs)
            if not isinstance(value, torch.Tensor):
                continue
            new = self.add_const(value.contiguous(), node)
            new.meta["val"] = node.meta.get("val")
            node.replace_all_uses_with(new)
            self.graph.erase_node(node)

    def fold_batchnorm(self) -> None:
        for bn in list(self.graph.nodes):
            if bn.op != "call_function" or bn.target is not aten._native_batch_norm_legit_no_training.default:
                continue
            x, w, b, mean, var = bn.args[:5]
            eps = bn.args[6] if len(bn.args) > 6 else bn.kwargs.get("eps", 1e-5)
            mean, var = self.const(mean), self.const(var)
            gamma, beta = self.const(w), self.const(b)
            outs = [u for u in bn.users if u.target is operator.getitem and u.args[1] == 0]
            if mean is None or var is None or len(outs) != len(bn.users):
                continue
            scale = (gamma.double() if gamma is not None else 1) / torch.sqrt(var.double() + eps)
            shift = (beta.double() if beta is not None else 0) - mean.double() * scale
            producer = x if isinstance(x, fx.Node) else None
            if self._fold_into_versatile(producer, scale, shift) or self._fold_into_weights(producer, scale, shift):
                for out in outs:
                    out.replace_all_uses_with(producer)
                    self.graph.erase_node(out)
                self.graph.erase_node(bn)
                self.folded_bn += 1
                continue
            # a batch norm after anything else: a per-channel scale and shift, as ATen ops
            shape = (-1,) + (1,) * (x.meta["val"].dim() - 2) if "val" in x.meta else (-1, 1, 1)
            with self.graph.inserting_before(bn):
                s = self.add_const(scale.float().view(shape), bn)
                t = self.add_const(shift.float().view(shape), bn)
                y = self.graph.call_function(aten.add.Tensor, (self.graph.call_function(aten.mul.Tensor, (x, s)), t))
            for out in outs:
                out.replace_all_uses_with(y)
                self.graph.erase_node(out)
            self.graph.erase_node(bn)
            self.rows.append({"layer": module_path(bn), "op": "BatchNorm (not after a convolution)",
                              "became": "per-channel scale and shift (ATen)"})

    def _fold_into_weights(self, producer, scale, shift) -> bool:
        """A batch norm after a convolution or linear layer with constant weights: scaled into
        them, exactly (in float64)."""
        foldable = (producer is not None and producer.op == "call_function"
                    and producer.target in (aten.conv2d.default, aten.linear.default)
                    and len(producer.users) == 1 and self.const(producer.args[1]) is not None
                    and (len(producer.args) < 3 or producer.args[2] is None or self.const(producer.args[2]) is not None))
        if not foldable:
            return False
        wt = self.const(producer.args[1])
        bias = self.const(producer.args[2]) if len(producer.args) > 2 else None
        view = (-1,) + (1,) * (wt.dim() - 1)
        new_w = (wt.double() * scale.view(view)).to(wt.dtype)
        new_b = ((bias.double() if bias is not None else 0) * scale + shift).to(wt.dtype)
        args = list(producer.args) + [None] * (3 - len(producer.args))
        args[1] = self.add_const(new_w, producer)
        args[2] = self.add_const(new_b, producer)
        producer.args = tuple(args)
        return True

    def _fold_into_versatile(self, producer, scale, shift) -> bool:
        """A batch norm after a versatile layer becomes its per-channel scale and bias (its
        output channels share weights, so the scale cannot go into them)."""
        if (producer is None or producer.target is not versatile_op() or len(producer.users) != 1
                or self.const(producer.args[1]) is None):
            return False
        b_node, s_node = producer.args[2], producer.args[3]
        bias, old = self.const(b_node), self.const(s_node)
        if (b_node is not None and bias is None) or (s_node is not None and old is None):
            return False
        dtype = self.const(producer.args[1]).dtype
        new_scale = ((old.double() if old is not None else 1) * scale).to(dtype)
        new_bias = ((bias.double() * scale if bias is not None else 0) + shift).to(dtype)
        args = list(producer.args)
        args[2], args[3] = self.add_const(new_bias, producer), self.add_const(new_scale, producer)
        producer.args = tuple(args)
        return True

    @staticmethod
    def _is_global_pool(node) -> bool:
        """An average over the whole H and W of a 4-D tensor."""
        val = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
        if val is None or val.dim() != 4:
            return False
        if node.target is aten.adaptive_avg_pool2d.default:
            return list(node.args[1]) == [1, 1]
        if node.target is aten.mean.dim:
            dims = sorted(d % 4 for d in node.args[1])
            return dims == [2, 3] and node.kwargs.get("dtype") is None
        return False

    def _conv_args(self, node):
        args = list(node.args) + [None, [1, 1], [0, 0], [1, 1], 1][len(node.args) - 2:]
        x, w, b, stride, padding, dilation, groups = args[:7]
        return x, w, b, tuple(stride), tuple(padding), tuple(dilation), groups

    def lower_layers(self) -> None:
        native_dtype = self.dtype in (torch.float32, torch.bfloat16)
        for node in list(self.graph.nodes):
            if node.op != "call_function":
                continue
            if node.target is aten.conv2d.default:
                self._lower_conv(node, native_dtype)
            elif node.target is versatile_op():
                self._lower_versatile(node)
            elif self._native and self._is_global_pool(node):
                keepdim = node.target is aten.adaptive_avg_pool2d.default or bool(
                    node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
                with self.graph.inserting_before(node):
                    new = self.graph.call_function(kernels.load().global_avg_pool, (node.args[0], keepdim))
                new.meta["val"], new.meta["layer"] = node.meta.get("val"), module_path(node)
                node.replace_all_uses_with(new)
                self.graph.erase_node(node)
            elif node.target is aten.linear.default:
                w, b = self.const(node.args[1]), self.const(node.args[2]) if len(node.args) > 2 else None
                row = {"layer": module_path(node), "op": f"linear {tuple(w.shape[::-1]) if w is not None else ''}"}
                self.rows.append(row)
                if w is None or (len(node.args) > 2 and node.args[2] is not None and b is None):
                    row["became"] = "ATen (weight computed in the graph)"
                    continue
                node.meta["step"] = Step("gemm", w.float(), None if b is None else b.float(), conv=False, row=row)

    def _lower_conv(self, node, native_dtype) -> None:
        x, w_node, b_node, stride, padding, dilation, groups = self._conv_args(node)
        w, b = self.const(w_node), self.const(b_node)
        cout, cin_g, kh, kw = w.shape if w is not None else (0, 0, 0, 0)
        cin = cin_g * groups
        desc = f"conv {kh}x{kw}/s{stride[0]}" + (f" groups={groups}" if groups > 1 else "") + f" {cin}->{cout}"
        row = {"layer": module_path(node), "op": desc}
        self.rows.append(row)
        if w is None or (b_node is not None and b is None):
            row["became"] = "ATen (weight computed in the graph)"
            return
        bias = None if b is None else b.float()
        if not (self._native and native_dtype):
            row["became"] = "ATen (native kernels unavailable)" if not self._native else "ATen (dtype)"
            return
        if groups == cin and cin_g == 1 and groups > 1:
            if cout != cin:
                row["became"] = f"ATen (depthwise with depth multiplier {cout // cin}: the native kernel takes 1)"
                return
            node.meta["step"] = Step("depthwise", w.float(), bias, stride=stride, dilation=dilation, row=row,
                                     pad=self._fold_pad(node, x, padding, row))
            return
        if groups > 1:
            row["became"] = "ATen (oneDNN convolution): grouped, not depthwise"
            return
        if (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0):
            node.meta["step"] = Step("gemm", w.reshape(cout, cin).float(), bias, row=row)
            return
        node.meta["step"] = Step("conv_gemm", w.float(), bias, stride=stride, dilation=dilation, row=row,
                                 pad=self._fold_pad(node, x, padding, row))

    def _lower_versatile(self, node) -> None:
        x, w_node, b_node, s_node, stride, padding, dilation, spatial, delta, g = node.args
        w, b, scale = self.const(w_node), self.const(b_node), self.const(s_node)
        p, c, k, _ = w.shape if w is not None else (0, 0, 0, 0)
        subs = ((k + 1) // 2 if spatial else 1) * (delta // g + 1)
        row = {"layer": module_path(node), "op": f"versatile {k}x{k}/s{stride[0]} {c}->{p * subs} "
                                                 f"({p} primary filters x {subs} sub-filters)"}
        self.rows.append(row)
        if w is None or (b_node is not None and b is None) or (s_node is not None and scale is None):
            row["became"] = "ATen (weights computed in the graph)"
            return
        if not self._native:
            row["became"] = "ATen (native kernels unavailable)"
            return
        if self.dtype == torch.bfloat16 and not (self._gemm_bf16 and native_even(c, k, spatial, delta, g)):
            row["became"] = "ATen (bfloat16: " + ("this CPU has no bfloat16 dot products)" if not self._gemm_bf16
                                                 else "a sub-filter starts at an odd column)")
            return
        if self.dtype not in (torch.float32, torch.bfloat16):
            row["became"] = "ATen (dtype)"
            return
        node.meta["step"] = Step("versatile", w.float(), None if b is None else b.float(), stride=tuple(stride),
                                 dilation=tuple(dilation), row=row, versatile=(spatial, delta, g),
                                 scale=None if scale is None else scale.float(),
                                 pad=self._fold_pad(node, x, tuple(padding), row))

    def _fold_pad(self, node, x, padding, row) -> tuple:
        """(top, bottom, left, right) of the convolution, an explicit zero pad just before it
        (used by nothing else) folded in and taken out of the graph."""
        pad = (padding[0], padding[0], padding[1], padding[1])
        if (isinstance(x, fx.Node) and x.op == "call_function" and len(x.users) == 1
                and x.target in (aten.constant_pad_nd.default, aten.pad.default)):
            explicit = self._zero_pad(x)
            if explicit is not None:
                left, right, top, bottom = explicit
                node.args = (x.args[0],) + node.args[1:]
                row["note"] = "explicit zero pad folded in"
                return (pad[0] + top, pad[1] + bottom, pad[2] + left, pad[3] + right)
        return pad

    @staticmethod
    def _zero_pad(pad_node) -> tuple | None:
        """(left, right, top, bottom) of a constant zero pad of the last two dimensions."""
        pads = list(pad_node.args[1])
        if pad_node.target is aten.pad.default:
            mode = pad_node.args[2] if len(pad_node.args) > 2 else pad_node.kwargs.get("mode", "constant")
            value = pad_node.args[3] if len(pad_node.args) > 3 else pad_node.kwargs.get("value")
            if mode != "constant" or value not in (None, 0, 0.0):
                return None
        else:
            value = pad_node.args[2] if len(pad_node.args) > 2 else pad_node.kwargs.get("value", 0)
            if value != 0:
                return None
        if len(pads) != 4 or min(pads) < 0:
            return None
        return tuple(pads)

    def fuse(self) -> None:
        for node in list(self.graph.nodes):
            if node.op != "call_function" or node not in self.graph.nodes:
                continue
            act = activation_of(node)
            if act is not None:
                src = node.args[0]
                step = src.meta.get("step") if isinstance(src, fx.Node) and len(src.users) == 1 else None
                if step is not None and step.add_act(act):
                    node.replace_all_uses_with(src)
                    self.graph.erase_node(node)
            elif node.target is aten.mul.Tensor:
                if not self._fuse_input_scale(node):
                    self._fuse_scale(node)
            elif node.target is aten.add.Tensor and node.kwargs.get("alpha", 1) == 1 and len(node.args) == 2:
                self._fuse_residual(node)

    def _chain(self, node):
        """(gemm node, permutation) when `node` is a gemm step's output, directly or through one
        permute, each used only once; else (None, None)."""
        if not isinstance(node, fx.Node) or len(node.users) != 1:
            return None, None
        step = node.meta.get("step")
        if step is not None and step.kind not in ("depthwise", "versatile"):
            return node, None
        if node.target is aten.permute.default:
            src = node.args[0]
            if isinstance(src, fx.Node) and len(src.users) == 1 and getattr(src.meta.get("step"), "kind", "") == "gemm":
                return src, list(node.args[1])
        return None, None

    def _fuse_scale(self, mul) -> None:
        """x * c with c a constant per output channel of the gemm producing x: scale the weights."""
        a, b = mul.args
        c, x = (self.const(a), b) if self.const(a) is not None else (self.const(b), a)
        if c is None:
            return
        g, perm = self._chain(x)
        if g is None or g.meta["step"].residual or g.meta["step"].act1.kind != "none":
            return
        step = g.meta["step"]
        out = g.meta.get("val")
        if out is None:
            return
        ndim = out.dim()
        channel = 1 if step.conv else ndim - 1            # the gemm's output channel dimension
        dim = perm.index(channel) if perm is not None else channel
        n = step.weight.shape[0]
        want = [1] * ndim
        want[dim] = n
        if c.dim() > ndim or list((1,) * (ndim - c.dim()) + tuple(c.shape)) != want:
            return
        scale = c.reshape(n).double()
        step.weight = (step.weight.double() * scale[:, None]).float()
        if step.bias is not None:
            step.bias = (step.bias.double() * scale).float()
        step.row["scale"] = "per-channel scale folded into the weights"
        mul.replace_all_uses_with(x)
        self.graph.erase_node(mul)

    def _fuse_input_scale(self, mul) -> bool:
        """x * s with s (B, C, 1, 1) computed in the graph (a squeeze-excitation's gate), read only
        by a 1x1 convolution: the product goes into its GEMM (kscale), not through memory."""
        user = next(iter(mul.users)) if len(mul.users) == 1 else None
        step = user.meta.get("step") if user is not None else None
        if step is None or step.kind != "gemm" or not step.conv or user.args[0] is not mul or step.kscale:
            return False
        out = mul.meta.get("val")
        for x, s in (mul.args, mul.args[::-1]):
            xv, sv = (v.meta.get("val") if isinstance(v, fx.Node) else None for v in (x, s))
            if (xv is None or sv is None or out is None or xv.dim() != 4 or tuple(out.shape) != tuple(xv.shape)
                    or tuple(sv.shape) != (xv.shape[0], xv.shape[1], 1, 1) or not (sv.dtype == xv.dtype == out.dtype)):
                continue
            step.kscale = True
            user.args = (x,) + tuple(user.args[1:])
            user.kwargs = {**user.kwargs, "kscale": s}
            step.row["input scale"] = "per-image channel scale (squeeze-excitation) fused"
            self.graph.erase_node(mul)
            return True
        return False

    def _fuse_residual(self, add) -> None:
        for side in (0, 1):
            g, perm = self._chain(add.args[side])
            other = add.args[1 - side]
            if g is None or not isinstance(other, fx.Node):
                continue
            step = g.meta["step"]
            if step.residual or step.act2.kind != "none":
                continue
            out, val = add.args[side].meta.get("val"), other.meta.get("val")
            if out is None or val is None or tuple(out.shape) != tuple(val.shape) or out.dtype != val.dtype:
                continue
            if not self._before(other, g):
                continue
            if perm is not None:
                inverse = [perm.index(i) for i in range(len(perm))]
                with self.graph.inserting_before(g):
                    other = self.graph.call_function(aten.permute.default, (other, inverse))
            # (a kwarg, so that the graph keeps it up to date when `other` is replaced)
            step.residual = True
            g.kwargs = {**g.kwargs, "residual": other}
            add.replace_all_uses_with(add.args[side])
            self.graph.erase_node(add)
            return

    def _before(self, a: fx.Node, b: fx.Node) -> bool:
        for node in self.graph.nodes:
            if node is a:
                return True
            if node is b:
                return False
        return False

    def materialize(self) -> None:
        C = kernels.load() if self._native else None
        bf16 = self.dtype == torch.bfloat16
        for node in list(self.graph.nodes):
            step = node.meta.get("step")
            if step is None:
                continue
            x = node.args[0]
            fused = [_describe_act(a) for a in (step.act1, step.act2) if a.kind != "none"]
            if step.kind == "versatile":
                new = self._materialize_versatile(node, step, x, bf16)
                fused = (["batch norm"] if step.scale is not None else []) + fused
                step.row["became"] = (f"native versatile im2col + {len(new.args[7]) // 5} GEMM calls (weights packed"
                                      f"{self._bf16_note if bf16 else ''})" + (f", {' + '.join(fused)} fused" if fused else ""))
            elif step.kind == "depthwise":
                w = self.add_const(C.weight_hwc(step.weight), node)
                b = None if step.bias is None else self.add_const(step.bias.float(), node)
                new = self._call_before(node, C.depthwise_hwc, (x, w, b, list(step.stride), list(step.pad),
                                                               list(step.dilation), *step.act1))
                name = kernels.kernel_name("forward", step.weight.shape[2:], step.stride, step.dilation, self.dtype)
                step.row["became"] = f"native depthwise {name}" + (f", {' + '.join(fused)} fused" if fused else "")
            elif self._native and (not bf16 or self._gemm_bf16):
                n = step.weight.shape[0]
                dense = step.kind == "conv_gemm"
                direct = dense and step.weight.shape[1] <= DIRECT_MAX_CHANNELS and not step.residual
                w2d = step.weight.permute(0, 2, 3, 1).reshape(n, -1) if dense else step.weight
                packed = self.add_const(C.gemm_pack(w2d, bf16 and not direct), node)
                b = None if step.bias is None else self.add_const(C.gemm_bias(step.bias), node)
                residual = node.kwargs.get("residual")
                if direct:
                    new = self._call_before(node, C.conv_direct, (
                        x, packed, n, b, list(step.weight.shape[2:]), list(step.stride), list(step.pad),
                        list(step.dilation), *step.act1, bf16))
                elif dense:
                    new = self._call_before(node, C.conv_gemm, (
                        x, packed, n, b, residual, list(step.weight.shape[2:]), list(step.stride), list(step.pad),
                        list(step.dilation), *step.act1, *step.act2))
                else:
                    kscale = (node.kwargs["kscale"],) if step.kscale else ()
                    new = self._call_before(node, C.gemm, (x, packed, n, b, residual, step.conv, *step.act1, *step.act2,
                                                           *kscale))
                kind = ("native direct convolution (few input channels, computed in float32)" if direct
                        else "native im2col + GEMM" if dense else "native GEMM")
                step.row["became"] = (kind + f" (weight packed{self._bf16_note if bf16 and not direct else ''})"
                                      + (", residual add fused" if step.residual else "")
                                      + (f", {' + '.join(fused)} fused" if fused else ""))
            else:
                new = aten_subgraph(self.gm, node, step, x, node.kwargs.get("residual"), self.dtype,
                                    node.kwargs.get("kscale"))
                step.row["became"] = "ATen " + ("linear" if step.kind == "gemm" and not step.conv else "convolution") + (
                    " (this CPU has no bfloat16 dot products)" if bf16 else " (native kernels unavailable)")
            new.meta["val"], new.meta["row"], new.meta["step"] = node.meta.get("val"), step.row, step
            if step.kind == "versatile":
                new.meta["gemm_k"] = step.weight[0].numel()
            elif step.kind != "depthwise":
                w = step.weight
                new.meta["gemm_k"] = w.shape[1] * (w.shape[2] * w.shape[3] if step.kind == "conv_gemm" else 1)
            node.replace_all_uses_with(new)
            self.graph.erase_node(node)

    def _materialize_versatile(self, node, step, x, bf16) -> fx.Node:
        spatial, delta, g = step.versatile
        nv = NativeVersatile(step.weight, step.bias, spatial, delta, g, scale=step.scale,
                             dtype=torch.bfloat16 if bf16 else torch.float32)
        packed = self.add_const(nv.packed, node)
        b, s = (None if v is None else self.add_const(v, node) for v in (nv.bias, nv.scale))
        return self._call_before(node, kernels.load().versatile_gemm, (
            x, packed, nv.p, nv.blocks, b, s, nv.runs, nv.calls, [nv.k, nv.k], list(step.stride), list(step.pad),
            list(step.dilation), *step.act1))

    def _call_before(self, node, target, args) -> fx.Node:
        with self.graph.inserting_before(node):
            return self.graph.call_function(target, tuple(args))

    def cast_constants(self) -> None:
        """Constants the ATen ops read take the compute dtype (the native steps' own constants
        were made in the layout and dtype their kernels read)."""
        C = kernels.load() if self._native else None
        native = {getattr(C, name) for name in kernels.INFERENCE_OPS} if C is not None else set()
        for node in self.graph.nodes:
            if node.op != "get_attr":
                continue
            if all(u.op == "call_function" and u.target in native for u in node.users):
                continue
            t = self.const(node)
            if t is not None and t.is_floating_point() and t.dtype != self.dtype:
                self._set_attr(node.target, t.to(self.dtype))

    def _set_attr(self, target: str, value: torch.Tensor) -> None:
        *path, name = target.split(".")
        obj = self.gm
        for part in path:
            obj = getattr(obj, part)
        if name in obj._parameters:
            obj._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
        elif name in obj._buffers:
            obj._buffers[name] = value
        else:
            setattr(obj, name, value)

    def _drop_unused_attributes(self) -> None:
        used = {n.target for n in self.graph.nodes if n.op == "get_attr"}
        for name, module in list(self.gm.named_modules()):
            for store in (module._parameters, module._buffers):
                for key in list(store):
                    full = f"{name}.{key}" if name else key
                    if full not in used:
                        del store[key]
        self.gm.delete_all_unused_submodules()
        for p in self.gm.parameters():
            p.requires_grad_(False)


def _act_node(graph, x, act: Act):
    if act.kind == "clamp":
        return graph.call_function(aten.hardtanh.default, (x, act.lo, act.hi))
    if act.kind in ("gelu", "gelu_tanh"):
        return graph.call_function(aten.gelu.default, (x,), {"approximate": "none" if act.kind == "gelu" else "tanh"})
    target = {v: k for k, v in _ACTS.items()}[act.kind]
    return graph.call_function(target, (x,))
