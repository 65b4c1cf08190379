"""Counting at the dispatch level: every aten op a model runs is seen (module calls and
functional calls alike), costed by `formulas.FORMULAS`, and attributed to the innermost
module running at that moment. Depthwise calls run with algorithm "reference" while
counting, so the count is that of the convolution as defined, whatever algorithm is used at
run time."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .. import algorithms
from .formulas import FORMULAS, VIEWS, kind_of


@dataclass
class Cost:
    """MACs (FLOPs = 2 x MACs), parameters and compulsory bytes of a layer or a model.

    Bytes count every tensor an op reads and writes once (no cache reuse); arithmetic
    intensity is FLOPs per byte."""

    name: str
    type: str = ""
    params: int = 0
    macs: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    calls: int = 0
    time_s: float | None = None

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0

    def add(self, macs: int, read: int, written: int) -> None:
        """Account one op."""
        self.macs += macs
        self.bytes_read += read
        self.bytes_written += written
        self.calls += 1

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(flops=self.flops, bytes=self.bytes, intensity_flop_per_byte=self.intensity)
        return d


@dataclass
class CostReport:
    """Result of :func:`count`: per-layer costs (leaf modules, in call order), a tree of
    totals per module path, the model total, a breakdown by layer kind, and every op that
    has no formula (with its call count)."""

    total: Cost
    layers: list[Cost]
    tree: dict[str, Cost]
    kinds: dict[str, Cost]
    unsupported: dict[str, int] = field(default_factory=dict)
    input_shape: tuple = ()

    def to_json(self) -> str:
        return json.dumps({
            "input_shape": list(self.input_shape), "total": self.total.as_dict(),
            "layers": [c.as_dict() for c in self.layers],
            "tree": {k: c.as_dict() for k, c in self.tree.items()},
            "kinds": {k: c.as_dict() for k, c in self.kinds.items()},
            "unsupported": self.unsupported}, indent=1)

    def to_csv(self) -> str:
        buf = io.StringIO()
        fields = ["name", "type", "params", "macs", "flops", "bytes_read", "bytes_written",
                  "intensity_flop_per_byte", "calls", "time_s"]
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for c in self.layers + [self.total]:
            w.writerow(c.as_dict())
        return buf.getvalue()

    def table(self, max_rows: int | None = None):
        """A rich Table of the layers and the total."""
        from .._optional import require

        Table = require("rich.table", "the per-layer cost table").Table
        t = Table(title=f"Cost for input {tuple(self.input_shape)} (MACs; FLOPs = 2 x MACs)")
        for col in ("layer", "type", "params", "MACs", "bytes", "FLOP/byte"):
            t.add_column(col, justify="left" if col in ("layer", "type") else "right")
        if any(c.time_s is not None for c in self.layers):
            t.add_column("measured ms", justify="right")
        rows = self.layers if max_rows is None else self.layers[:max_rows]
        for c in rows + [self.total]:
            cells = [c.name, c.type, f"{c.params:,}", f"{c.macs:,}", f"{c.bytes:,}", f"{c.intensity:.2f}"]
            if len(t.columns) == 7:
                cells.append("" if c.time_s is None else f"{c.time_s * 1e3:.3f}")
            t.add_row(*cells, end_section=c is rows[-1])
        return t


class _Recorder(TorchDispatchMode):
    def __init__(self, stack):
        super().__init__()
        self.stack = stack
        self.events = []
        self.unsupported = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # With autograd's dispatch keys active (grad enabled or no_grad), composite ops such
        # as conv2d and linear are split into their parts (convolution, addmm) before they
        # reach this mode; inference mode excludes those keys, so the composite op itself
        # arrives here. Splitting it the same way makes every grad mode record the same ops.
        with self:
            out = func.decompose(*args, **(kwargs or {}))
        if out is not NotImplemented:
            return out
        out = func(*args, **(kwargs or {}))
        formula = FORMULAS.get(func)
        if formula is None:
            self.unsupported[str(func)] += 1
            macs = 0
        else:
            macs = formula(args, out)
        read = written = 0
        if func not in VIEWS:
            seen = set()
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, torch.Tensor) and id(t) not in seen:
                    seen.add(id(t))
                    read += t.numel() * t.element_size()
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    written += t.numel() * t.element_size()
        self.events.append((self.stack[-1] if self.stack else "", func, macs, read, written,
                            kind_of(func, args)))
        return out


def count(model: torch.nn.Module, *inputs, **kwargs) -> CostReport:
    """Count parameters, MACs and bytes of ``model(*inputs, **kwargs)``.

    Example:
        >>> from sepconv.models import create_model
        >>> r = count(create_model("mobilenet_v1").eval(), torch.randn(1, 3, 224, 224))
        >>> r.total.params, round(r.total.macs / 1e6, 1)
        (4231976, 568.7)
    """
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[str] = []
    order: list[str] = []

    def pre(mod, args):
        name = names.get(id(mod))
        if name is not None:
            stack.append(name)
            if name not in order:
                order.append(name)

    def post(mod, args, out):
        if names.get(id(mod)) is not None:
            stack.pop()

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    recorder = _Recorder(stack)
    try:
        with torch.no_grad(), algorithms.forced("reference"), recorder:
            model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()

    modules = dict(model.named_modules())
    kind_modules = set()  # (module, kind): a module's weights count once for its kind
    tree: dict[str, Cost] = {}
    kinds: dict[str, Cost] = {}
    for name in order:
        mod = modules[name]
        tree[name] = Cost(name or "(model)", type(mod).__name__,
                          params=sum(p.numel() for p in mod.parameters()))
    for module, func, macs, read, written, kind in recorder.events:
        parts = module.split(".") if module else []
        for depth in range(len(parts) + 1):
            key = ".".join(parts[:depth])
            if key in tree:
                tree[key].add(macs, read, written)
        if kind != "other":
            kinds.setdefault(kind, Cost(kind, kind)).add(macs, read, written)
            kind_modules.add((module, kind))
    for module, kind in kind_modules:
        mod = modules.get(module)
        if mod is not None:
            kinds[kind].params += sum(p.numel() for p in mod.parameters(recurse=False))
    layer_list = []
    for name in order:
        mod = modules[name]
        if next(iter(mod.children()), None) is None and name:
            c = tree[name]
            c.params = sum(p.numel() for p in mod.parameters(recurse=False))
            layer_list.append(c)
    total = tree[""]
    total.params = sum(p.numel() for p in model.parameters())
    total.name = "total"
    shape = tuple(inputs[0].shape) if inputs and isinstance(inputs[0], torch.Tensor) else ()
    return CostReport(total=total, layers=layer_list, tree=tree, kinds=kinds,
                      unsupported=dict(recorder.unsupported), input_shape=shape)
