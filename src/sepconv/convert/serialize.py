"""Saving and loading optimized models without optimizing them again.

A saved model is one ``torch.save`` file of plain data, loaded with ``weights_only=True`` (no
code runs from the file): per input signature, the lowered graph as a list of nodes whose
targets are ATen ops or sepconv's kernels (by name, from a fixed set), their constant tensors,
and the input and output pytree specs. GEMM weights are stored unpacked (their packed layout
belongs to one CPU's kernel set) and packed again when loaded: loading does no capture, folding
or timing, only that layout change.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.utils._pytree import treespec_dumps, treespec_loads

from .. import kernels
from .._files import atomic_write
from .._validation import fail

FORMAT = "sepconv-optimized-model"
VERSION = 1
_KERNELS = kernels.INFERENCE_OPS
# kernel -> (packed weight, N, gemm_bias) argument positions (versatile_gemm's bias is plain)
_PACKED_ARG = {"gemm": (1, 2, 3), "conv_gemm": (1, 2, 3), "conv_direct": (1, 2, 3), "versatile_gemm": (1, 2, None),
               "dw_gemm": (9, 10, 11), "gemm_dw": (1, 2, 3)}


def _target_name(target) -> str:
    if target is operator.getitem:
        return "operator.getitem"
    if isinstance(target, torch._ops.OpOverload):
        return f"aten:{target._schema.name.split('::')[1]}.{target._overloadname}" \
            if target.namespace == "aten" else None
    C = kernels.load() if kernels.is_available() else None
    for name in _KERNELS:
        if C is not None and target is getattr(C, name):
            return f"sepconv:{name}"
    return None


def _target(name: str):
    kind, _, rest = name.partition(":")
    if name == "operator.getitem":
        return operator.getitem
    if kind == "aten":
        op, _, overload = rest.rpartition(".")
        return getattr(getattr(torch.ops.aten, op), overload)
    if kind == "sepconv" and rest in _KERNELS:
        return getattr(kernels.load(), rest)
    fail("load", "the file names an operation sepconv does not load.", name)


def _encode(value):
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [_encode(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).replace("torch.", "")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).replace("torch.", "")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    fail("save", "a graph argument of this type cannot be saved.", f"{type(value).__name__}")


def _decode(value, env):
    if isinstance(value, dict):
        (kind, v), = value.items()
        if kind == "node":
            return env[v]
        if kind in ("list", "tuple"):
            items = [_decode(x, env) for x in v]
            return items if kind == "list" else tuple(items)
        if kind == "dict":
            return {k: _decode(x, env) for k, x in v.items()}
        if kind in ("dtype", "memory_format"):
            return getattr(torch, v)
        if kind == "device":
            return torch.device(v)
    return value


def graph_payload(gm: fx.GraphModule) -> dict:
    """The plain-data form of one lowered graph module."""
    C = kernels.load()
    nodes, tensors, packed = [], {}, {}
    for node in gm.graph.nodes:
        entry = {"name": node.name, "op": node.op}
        if node.op == "call_function":
            name = _target_name(node.target)
            if name is None:
                fail("save", "the graph calls an operation that cannot be saved.", f"{node.name}: {node.target}")
            entry["target"] = name
            kernel = name.partition(":")[2]
            if kernel in _PACKED_ARG:   # weights stored unpacked, repacked for the loading CPU
                w_pos, n_pos, b_pos = _PACKED_ARG[kernel]
                w_node, n, k = node.args[w_pos], node.args[n_pos], node.meta["gemm_k"]
                b_node = node.args[b_pos] if b_pos is not None else None
                t = _attr(gm, w_node.target)
                packed[w_node.target] = {"weight": C.gemm_unpack(t, n, k).to(t.dtype),
                                         "bf16": t.dtype == torch.bfloat16, "k": k}
                if b_pos is not None and b_node is not None:
                    packed[b_node.target] = {"bias": _attr(gm, b_node.target)[:n].clone()}
        else:
            entry["target"] = node.target if isinstance(node.target, str) else None
        entry["args"], entry["kwargs"] = _encode(list(node.args)), _encode(dict(node.kwargs))
        nodes.append(entry)
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in packed:
            tensors[node.target] = _attr(gm, node.target)
    info = gm.graph._codegen.pytree_info
    return {"nodes": nodes, "tensors": tensors, "packed": packed, "orig_args": list(info.orig_args),
            "in_spec": treespec_dumps(info.in_spec), "out_spec": treespec_dumps(info.out_spec)}


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def graph_from_payload(payload: dict) -> fx.GraphModule:
    C = kernels.load()
    root = torch.nn.Module()
    for name, t in payload["tensors"].items():
        root.register_buffer(name.replace(".", "_"), t)
    for name, p in payload["packed"].items():
        t = C.gemm_pack(p["weight"], p["bf16"]) if "weight" in p else C.gemm_bias(p["bias"])
        root.register_buffer(name.replace(".", "_"), t)
    payload = {**payload, "packed": {k.replace(".", "_"): v for k, v in payload["packed"].items()}}
    graph = fx.Graph()
    env: dict = {}
    for entry in payload["nodes"]:
        op = entry["op"]
        if op == "placeholder":
            env[entry["name"]] = graph.placeholder(entry["target"])
        elif op == "get_attr":
            env[entry["name"]] = graph.get_attr(entry["target"].replace(".", "_"))
        elif op == "call_function":
            node = graph.call_function(_target(entry["target"]), tuple(_decode(entry["args"], env)),
                                       _decode(entry["kwargs"], env))
            kernel = entry["target"].partition(":")[2]
            weight = payload["packed"].get(node.args[_PACKED_ARG[kernel][0]].target) if kernel in _PACKED_ARG else None
            if weight is not None:
                node.meta["gemm_k"] = weight["k"]
            env[entry["name"]] = node
        elif op == "output":
            graph.output(_decode(entry["args"], env)[0])
        else:
            fail("load", "the file holds a graph node of an unknown kind.", op)
    graph._codegen = _PyTreeCodeGen(_PyTreeInfo(payload["orig_args"], treespec_loads(payload["in_spec"]),
                                                treespec_loads(payload["out_spec"])))
    gm = fx.GraphModule(root, graph)
    return gm


def _encode_signature(sig) -> dict:
    spec, leaves = sig
    return {"spec": treespec_dumps(spec),
            "leaves": [[list(a), str(b).replace("torch.", "")] if isinstance(b, torch.dtype) else ["value", b]
                       for a, b in leaves]}


def _decode_signature(d) -> tuple:
    leaves = tuple((tuple(a), getattr(torch, b)) if a != "value" else (type(b), b) for a, b in d["leaves"])
    return (treespec_loads(d["spec"]), leaves)


def save(model, path) -> None:
    """Write an :class:`~sepconv.convert.optimize.OptimizedModel` to `path` (atomically).

    Example:
        >>> import tempfile, pathlib
        >>> from sepconv.models import create_model
        >>> from sepconv.convert import optimize_for_inference
        >>> m = optimize_for_inference(create_model("mobilenet_v1_small", alpha=0.25).eval(),
        ...                            torch.randn(1, 1, 8, 8), tune=False)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.pt"
        >>> save(m, path)
        >>> load(path)(torch.randn(1, 1, 8, 8)).shape
        torch.Size([1, 10])
    """
    from .optimize import OptimizedModel

    if not isinstance(model, OptimizedModel):
        fail("save", "`model` must come from optimize_for_inference.", f"type {type(model).__name__}", TypeError)
    plans = {}
    for sig, name in model._keys.items():
        gm = model.plans[name]
        if not isinstance(gm, fx.GraphModule):
            fail("save", "a model optimized by the module-level rewrite (it could not be captured as a graph) "
                 "cannot be saved; save the original model's state_dict instead.", model.report.captured)
        plans[name] = {"graph": graph_payload(gm), "signature": _encode_signature(sig)}
    payload = {"format": FORMAT, "version": VERSION, "dtype": str(model.dtype).replace("torch.", ""),
               "plans": plans, "report": str(model.report) if model.report is not None else model.loaded_report}
    atomic_write(path, lambda f: torch.save(payload, f), binary=True)


def load(path):
    """An :class:`~sepconv.convert.optimize.OptimizedModel` saved by :func:`save`. It runs the
    input shapes it was optimized for (it has no source model to plan others with)."""
    from .optimize import OptimizedModel

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        fail("load", "the file must be an optimized model written by sepconv.convert.save.",
             f"{path} ({type(e).__name__}: {next(iter(str(e).splitlines()), '')})")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        fail("load", "the file must be an optimized model written by sepconv.convert.save.", str(path))
    if payload.get("version") != VERSION:
        fail("load", f"the file's format version must be {VERSION}.", f"version {payload.get('version')!r}")
    if not kernels.is_available():
        fail("load", "an optimized model needs sepconv's native kernels.", kernels.unavailable_reason())
    model = OptimizedModel(None, getattr(torch, payload["dtype"]), tune=False)
    for name, plan in payload["plans"].items():
        model.plans[name] = graph_from_payload(plan["graph"])
        model._keys[_decode_signature(plan["signature"])] = name
    model.loaded_report = payload["report"]
    return model
