"""An optimized graph as one native call (``sepconv._C.Program``).

The lowered fx graph stays the plan (it is what is saved); this module turns it into a
Program for the shapes of one call: every node an operator of the dispatcher called from C++
with its constants converted once, and the native kernels' outputs placed in one arena. The
first call runs the graph in Python and records each node's output; from those records come
the slots, each activation's lifetime (a view lives as long as the tensor it views) and the
arena offsets, assigned greedily, largest first, so that tensors alive at the same step never
share bytes. Graph outputs, and anything viewing them, are left out of the arena: they outlive
the call.

A graph with a node the Program cannot run (an operator outside ATen and sepconv, whose
kernel might need Python) stays an fx graph: :func:`build` returns None.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.fx._pytree import tree_flatten_spec

from .. import kernels
from .graph import module_path

_ARENA_ALIGN = 64


def _schema_of(target):
    """(name, overload, schema) of a node's operator, or None if the Program cannot call it."""
    C = kernels.load()
    for name in kernels.INFERENCE_OPS:
        if target is getattr(C, name):
            op = getattr(torch.ops.sepconv, name).default
            return f"sepconv::{name}", "", op._schema
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "aten":
        return target._schema.name, target._schema.overload_name, target._schema
    return None


def _positional(node, schema):
    """The node's arguments in the order of the schema's, defaults filled in."""
    values = []
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            values.append(node.args[i])
        elif arg.name in node.kwargs:
            values.append(node.kwargs[arg.name])
        elif arg.has_default_value():
            values.append(arg.default_value)
        else:
            raise ValueError(f"{node.name}: argument {arg.name} missing")
    return values


@dataclass
class _Meta:
    """A node's output as the first call saw it: its tensor's shape, strides and dtype, the
    bytes of its storage, and `root`, the node whose output owns that storage (itself, unless
    the output views one of its inputs)."""

    value: object
    root: fx.Node
    nbytes: int = 0


class _Recorder(fx.Interpreter):
    """Runs the graph, keeping each node's output as metadata (an empty tensor of the same
    shape, strides and dtype), so that no activation outlives its last use."""

    def __init__(self, gm):
        super().__init__(gm)
        self.meta: dict[fx.Node, _Meta] = {}

    def run_node(self, node):
        out = super().run_node(node)
        if isinstance(out, torch.Tensor):
            # an output sharing an input's storage is a view of it (the inputs are alive here)
            ptr = out.untyped_storage().data_ptr()
            root = next((self.meta[a].root for a in node.all_input_nodes if a in self.meta
                         and isinstance(self.env.get(a), torch.Tensor)
                         and self.env[a].untyped_storage().data_ptr() == ptr), node)
            empty = torch.empty_strided(out.shape, out.stride(), dtype=out.dtype, device="meta")
            self.meta[node] = _Meta(empty, root, out.untyped_storage().nbytes())
        else:
            self.meta[node] = _Meta(out if not isinstance(out, (tuple, list)) else tuple(out), node)
        return out


class ProgramRunner:
    """A Program for one graph and input signature: call with the graph's flat inputs.
    ``arena``: (node name, offset, bytes, first step, last step) of each tensor placed there;
    ``layers``: per step, (the model's layer it computes, the operator)."""

    def __init__(self, program, outputs: list, out_spec, arena: list, layers: list):
        self.program, self.outputs, self.out_spec, self.arena, self.layers = program, outputs, out_spec, arena, layers

    def _slots(self):
        return [s for kind, s in self.outputs if kind == "slot"]

    def _tree(self, values):
        got = iter(values)
        return pytree.tree_unflatten([next(got) if kind == "slot" else v for kind, v in self.outputs], self.out_spec)

    def __call__(self, flat_inputs):
        return self._tree(self.program.run(list(flat_inputs), self._slots()))

    def profile(self, flat_inputs, rounds: int = 20) -> list[tuple[str, str, float]]:
        """(layer, operator, median seconds) per step over `rounds` calls."""
        runs = [self.program.run_timed(list(flat_inputs), self._slots())[1] for _ in range(rounds)]
        return [(layer, op, sorted(r[k] for r in runs)[len(runs) // 2]) for k, (layer, op) in enumerate(self.layers)]


def flat_inputs(gm: fx.GraphModule, args, kwargs) -> list:
    return tree_flatten_spec((list(args), kwargs), gm._in_spec)


def build(gm: fx.GraphModule, args, kwargs):
    """(ProgramRunner or None, the outputs of running `gm` on args/kwargs)."""
    rec = _Recorder(gm)
    with torch.inference_mode():
        result = rec.run(*flat_inputs(gm, args, kwargs))
    if not kernels.is_available():
        return None, result
    nodes = list(gm.graph.nodes)
    calls = [n for n in nodes if n.op == "call_function" and n.target is not operator.getitem]
    if any(_schema_of(n.target) is None for n in calls):
        return None, result
    return _compile(gm, rec.meta, nodes, calls), result


def _output(gm):
    return next(n for n in gm.graph.nodes if n.op == "output")


def _compile(gm, meta, nodes, calls) -> ProgramRunner | None:
    C = kernels.load()
    slot: dict = {}       # node -> slot, (node, i) -> slot for the i-th value of a tuple
    placeholders = [n for n in nodes if n.op == "placeholder"]
    for i, n in enumerate(placeholders):
        slot[n] = i
    n_slots = len(placeholders)
    step_of: dict[fx.Node, int] = {}
    for i, n in enumerate(calls):
        step_of[n] = i
        if isinstance(meta[n].value, tuple):
            for j in range(len(meta[n].value)):
                slot[(n, j)] = n_slots
                n_slots += 1
        else:
            slot[n] = n_slots
            n_slots += 1
    for n in nodes:   # getitem of a tuple-valued node reads that value's slot
        if n.op == "call_function" and n.target is operator.getitem:
            src, j = n.args
            if (src, j) not in slot:
                return None
            slot[n] = slot[(src, j)]

    def const(n):
        obj = gm
        for part in n.target.split("."):
            obj = getattr(obj, part)
        return obj

    # the step reading each slot last (outputs are read after every step)
    last_read: dict[int, int] = {}
    out_node = _output(gm)
    out_leaves = pytree.tree_leaves(out_node.args[0])
    program = C.Program(n_slots)
    steps = []
    for i, n in enumerate(calls):
        name, overload, schema = _schema_of(n.target)
        args, slots, lists = [], [], []
        for v in _positional(n, schema):
            s, ls = -1, []
            if isinstance(v, fx.Node):
                if v.op == "get_attr":
                    v = const(v)
                else:
                    s, v = slot[v], None
            elif isinstance(v, (list, tuple)) and any(isinstance(e, fx.Node) for e in v):
                if not all(isinstance(e, fx.Node) and e.op != "get_attr" for e in v):
                    return None
                ls, v = [slot[e] for e in v], None
            args.append(v)
            slots.append(s)
            lists.append(ls)
            for r in ([s] if s >= 0 else []) + ls:
                last_read[r] = i
        outs = [slot[(n, j)] for j in range(len(meta[n].value))] if isinstance(meta[n].value, tuple) else [slot[n]]
        steps.append((name, overload, args, slots, lists, outs))
    kept = {slot[v] for v in out_leaves if isinstance(v, fx.Node)}
    frees: list[list[int]] = [[] for _ in calls]
    for s, i in last_read.items():
        if s not in kept:
            frees[i].append(s)
    for (name, overload, args, slots, lists, outs), fr in zip(steps, frees):
        try:
            program.add_step(name, overload, args, slots, lists, outs, fr)
        except (RuntimeError, TypeError):   # an argument the dispatcher cannot take as a constant
            return None
    arena = _plan_arena(program, meta, calls, step_of, slot, last_read, out_leaves)
    outputs = [("slot", slot[v]) if isinstance(v, fx.Node) else ("const", v) for v in out_leaves]
    layers = [(module_path(n), _schema_of(n.target)[0]) for n in calls]
    return ProgramRunner(program, outputs, gm._out_spec, arena, layers)


def arena_blocks(meta, calls, step_of, slot, last_read, out_leaves) -> list[tuple[fx.Node, int, int, int]]:
    """(node, bytes, first step, last step) of every native kernel's output that goes in the
    arena: a fresh tensor (not a view) that no output of the graph views, alive from its step
    to the last step reading it or a view of it."""
    C = kernels.load()
    native = {getattr(C, name) for name in kernels.ARENA_OPS}
    last_use: dict[fx.Node, int] = {}
    for n in calls:
        root = meta[n].root
        last_use[root] = max(last_use.get(root, -1), last_read.get(slot.get(n), step_of[n]))
    escaping = {meta[v].root for v in out_leaves if isinstance(v, fx.Node) and v in meta}
    blocks = []
    for n in calls:
        m = meta[n]
        if n.target in native and m.root is n and n not in escaping and isinstance(m.value, torch.Tensor):
            blocks.append((n, (m.nbytes + _ARENA_ALIGN - 1) // _ARENA_ALIGN * _ARENA_ALIGN, step_of[n], last_use[n]))
    return blocks


def arena_offsets(blocks) -> list[int]:
    """An offset per (node, bytes, first, last) block such that blocks whose step ranges meet
    never share bytes: largest first, each at the lowest offset clear of those placed."""
    offsets: dict[int, int] = {}
    placed: list[tuple[int, int, int, int]] = []   # (offset, bytes, first, last)
    for k in sorted(range(len(blocks)), key=lambda k: -blocks[k][1]):
        _, nbytes, first, last = blocks[k]
        offset = 0
        for o, b, _, _ in sorted(p for p in placed if p[2] <= last and first <= p[3]):
            if offset + nbytes <= o:
                break
            offset = max(offset, o + b)
        placed.append((offset, nbytes, first, last))
        offsets[k] = offset
    return [offsets[k] for k in range(len(blocks))]


def _plan_arena(program, meta, calls, step_of, slot, last_read, out_leaves) -> list:
    """Places the blocks; returns (node name, offset, bytes, first step, last step) of each."""
    blocks = arena_blocks(meta, calls, step_of, slot, last_read, out_leaves)
    if not blocks:
        return []
    offsets = arena_offsets(blocks)
    program.set_arena(max(o + b for o, (_, b, _, _) in zip(offsets, blocks)))
    for (n, _, first, _), offset in zip(blocks, offsets):
        t = meta[n].value
        program.set_hint(first, offset, list(t.shape), list(t.stride()), torch.empty(0, dtype=t.dtype))
    return [(n.name, o, b, f, l) for (n, b, f, l), o in zip(blocks, offsets)]
