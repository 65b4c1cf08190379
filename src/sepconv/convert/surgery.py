"""Model conversions. Each returns ``(new_model, ConversionReport)``; the input model is not
modified. Conversions walk ``nn.Sequential`` containers and the library's own blocks, whose
child order is their execution order (the only place "a conv followed by a BN" is sure)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from .._validation import fail, positive_int
from ..layers import DepthwiseConv2d, DepthwiseSeparableConv2d, SpatiallySeparableConv2d, VersatileConv2d
from .trees import call_arguments, output_difference


@dataclass
class ConversionReport:
    """What a conversion changed. ``layers``: one row per layer replaced (name, from, to,
    params and MACs before and after, the input its MACs were counted on, and the SVD
    reconstruction error where there is one); ``skipped``: one row per convolution left as it
    was, with the reason. Totals, and with an example input MACs, output difference (max abs
    over all output leaves, and relative) and on request latency, before and after."""

    kind: str
    layers: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    max_abs_diff: float | None = None
    rel_diff: float | None = None
    latency_ms_before: float | None = None
    latency_ms_after: float | None = None

    def __str__(self):
        lines = [f"{self.kind}: {len(self.layers)} layer(s) changed, {len(self.skipped)} left as they were"]
        for row in self.layers:
            cost = ""
            if "params_before" in row:
                cost = (f"; params {row['params_before']:,} -> {row['params_after']:,}"
                        f"; MACs {_mega(row['macs_before'])} -> {_mega(row['macs_after'])}")
            err = row.get("reconstruction_error")
            lines.append(f"  {row['name']}: {row['from']} -> {row['to']}{cost}"
                         + (f"; reconstruction error {err:.3g}" if err is not None else ""))
        lines += [f"  {row['name']}: {row['from']} left: {row['reason']}" for row in self.skipped]
        lines.append(f"  total parameters {self.params_before:,} -> {self.params_after:,}")
        if self.macs_before is not None:
            lines.append(f"  total MACs       {self.macs_before:,} -> {self.macs_after:,}")
        if self.max_abs_diff is not None:
            lines.append(f"  output difference: max abs {self.max_abs_diff:.3g}, relative {self.rel_diff:.3g}")
        if self.latency_ms_before is not None:
            lines.append(f"  latency    {self.latency_ms_before:.3f} ms -> {self.latency_ms_after:.3f} ms")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _mega(macs: int) -> str:
    return f"{macs / 1e6:.1f}M" if macs >= 1e5 else f"{macs:,}"


def finish_report(report, before, after, example_input=None, measure=False):
    """Fill the totals of `report`; with `example_input` (a tensor, a tuple of arguments or a
    dict of keyword arguments) also MACs, the output difference over every output leaf and,
    with `measure`, latencies."""
    report.params_before = sum(p.numel() for p in before.parameters())
    report.params_after = sum(p.numel() for p in after.parameters())
    if example_input is not None:
        from ..analysis import count

        args, kwargs = call_arguments(report.kind, example_input)
        before_mode, after_mode = before.training, after.training
        before.eval(), after.eval()
        report.macs_before = count(before, *args, **kwargs).total.macs
        report.macs_after = count(after, *args, **kwargs).total.macs
        with torch.no_grad():
            report.max_abs_diff, report.rel_diff = output_difference(before(*args, **kwargs), after(*args, **kwargs))
        if measure:
            from ..timing import median_seconds

            with torch.no_grad():
                report.latency_ms_before = median_seconds(lambda: before(*args, **kwargs)) * 1e3
                report.latency_ms_after = median_seconds(lambda: after(*args, **kwargs)) * 1e3
        before.train(before_mode), after.train(after_mode)
    return report


def _walk(module, prefix=""):
    """(parent, child name, child, full name) for every child, depth first."""
    for name, child in list(module.named_children()):
        full = f"{prefix}.{name}" if prefix else name
        yield module, name, child, full
        yield from _walk(child, full)


# ------------------------------------------------------------------------ batch-norm folding

def fold_conv_bn(conv, bn) -> None:
    """Fold eval-mode `bn` into `conv` in place: w' = w * g / sqrt(v + eps),
    b' = (b - mean) * g / sqrt(v + eps) + beta."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0) - bn.running_mean * scale
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.weight.shape[0], dtype=conv.weight.dtype,
                                                 device=conv.weight.device))
        conv.bias.mul_(scale.to(conv.bias.dtype)).add_(shift.to(conv.bias.dtype))


def fold_batchnorm(model: nn.Module, example_input=None):
    """Fold every BatchNorm2d that directly follows a convolution (nn.Conv2d or
    DepthwiseConv2d) inside nn.Sequential or DepthwiseSeparableConv2d into that convolution.
    Returns an eval-mode copy (folding uses running statistics) and a report.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
        >>> folded, report = fold_batchnorm(m)
        >>> type(folded[1]).__name__
        'Identity'
    """
    new = copy.deepcopy(model).eval()
    report = ConversionReport("fold_batchnorm")
    for parent, name, child, full in list(_walk(new)):
        if not isinstance(parent, (nn.Sequential, DepthwiseSeparableConv2d)):
            continue
        if not isinstance(child, nn.BatchNorm2d):
            continue
        names = [n for n, _ in parent.named_children()]
        i = names.index(name)
        prev = getattr(parent, names[i - 1]) if i else None
        if isinstance(prev, (nn.Conv2d, DepthwiseConv2d)) and prev.weight.shape[0] == child.num_features:
            fold_conv_bn(prev, child)
            setattr(parent, name, nn.Identity())
            report.layers.append({"name": full, "from": "BatchNorm2d", "to": f"folded into {names[i - 1]}"})
    return new, finish_report(report, model, new, example_input)


# ----------------------------------------------------------------------- conv replacements

def _describe(conv) -> str:
    (kh, kw), pad = conv.kernel_size, conv.padding
    extra = "".join(f" {label}{v[0] if v[0] == v[1] else v}" for label, v, one in
                    (("s", conv.stride, (1, 1)), ("d", conv.dilation, (1, 1))) if v != one)
    pad = f" padding={pad!r}" if isinstance(pad, str) else ""
    return f"{type(conv).__name__} {conv.in_channels}->{conv.out_channels} {kh}x{kw}{extra}{pad}"


def _conv_inputs(model, example_input, kind) -> dict:
    """The input of each nn.Conv2d of `model` (by name) on `example_input`, as an empty
    tensor of its shape and dtype: per-layer MACs are counted on it."""
    args, kwargs = call_arguments(kind, example_input)
    seen: dict = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, a, name=name: seen.setdefault(name, torch.zeros(a[0].shape, dtype=a[0].dtype)))
        for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    mode = model.training
    try:
        with torch.no_grad():
            model.eval()(*args, **kwargs)
    finally:
        model.train(mode)
        for h in hooks:
            h.remove()
    return seen


def _nominal_input(conv) -> torch.Tensor:
    """Without an example input, per-layer MACs are counted on 1 x C x 32 x 32 (or the
    kernel's span if larger): the comparison before/after hardly depends on the size."""
    side = max(32, *(d * (k - 1) + 1 for k, d in zip(conv.kernel_size, conv.dilation)))
    return torch.zeros(1, conv.in_channels, side, side, dtype=conv.weight.dtype)


def _cost(layer, x) -> tuple[int, int]:
    from ..analysis import count

    total = count(layer, x).total
    return total.params, total.macs


def _common_reason(conv, min_kernel: int) -> str | None:
    """Why a convolution is not converted by any of the conversions, or None."""
    if isinstance(conv, DepthwiseConv2d):
        return "already depthwise (DepthwiseConv2d)"
    if type(conv) is not nn.Conv2d:
        return (f"{type(conv).__name__} subclasses nn.Conv2d with its own behaviour (such as padding computed "
                "from each input): a replacement could compute something else")
    if conv.groups != 1:
        return f"depthwise (groups={conv.groups})" if conv.groups == conv.in_channels else \
            f"grouped (groups={conv.groups})"
    if min(conv.kernel_size) < min_kernel:
        kh, kw = conv.kernel_size
        return f"kernel {kh}x{kw} is smaller than {min_kernel} in a dimension"
    return None


def _replace_convs(model, kind: str, example_input, min_kernel: int, build):
    """The loop of every conv replacement. Each nn.Conv2d of a copy of `model` is either
    replaced by ``build(conv) -> (layer, to, extra row fields)`` or listed in
    ``report.skipped`` with the reason: a rule of :func:`_common_reason`, a reason `build`
    returned as a string, or a replacement that would not strictly lower both parameters and
    MACs (a decomposition can cost more than the layer it replaces)."""
    if not isinstance(model, nn.Module):
        fail(kind, "`model` must be an nn.Module.", f"type {type(model).__name__}", TypeError)
    new = copy.deepcopy(model)
    report = ConversionReport(kind)
    inputs = _conv_inputs(new, example_input, kind) if example_input is not None else {}
    for parent, name, child, full in list(_walk(new)):
        if not isinstance(child, nn.Conv2d):
            continue
        row = {"name": full, "from": _describe(child)}
        made = _common_reason(child, min_kernel) or build(child)
        if isinstance(made, str):
            report.skipped.append({**row, "reason": made})
            continue
        layer, to, extra = made
        x = inputs.get(full)
        x = _nominal_input(child) if x is None else x
        (pb, mb), (pa, ma) = _cost(child, x), _cost(layer, x)
        if not (pa < pb and ma < mb):
            report.skipped.append({**row, "reason": f"{to} would cost {_mega(ma)} MACs and {pa:,} parameters "
                                                    f"vs {_mega(mb)} and {pb:,}", **extra})
            continue
        setattr(parent, name, layer)
        report.layers.append({**row, "to": to, "params_before": pb, "params_after": pa, "macs_before": mb,
                              "macs_after": ma, "macs_input": list(x.shape), **extra})
    return new, finish_report(report, model, new, example_input)


def _conv_args(conv) -> dict:
    """nn.Conv2d's arguments of `conv`, for the layer that replaces it: the new layer carries
    the same attributes (in_channels, kernel_size, stride, padding as given, ...)."""
    w = conv.weight
    return dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
                stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                padding_mode=conv.padding_mode, device=w.device, dtype=w.dtype)


def _relative_error(approx, w) -> float:
    return ((approx - w).norm() / w.norm().clamp_min(1e-30)).item()


def to_separable(model: nn.Module, example_input=None, min_kernel: int = 3):
    """Replace every standard nn.Conv2d (groups=1, kernel >= `min_kernel` in both dimensions)
    by a DepthwiseSeparableConv2d with the same attributes (stride, padding including "same"
    and "valid", dilation, padding_mode), initialised with the best separable approximation of
    its kernel: for each input channel c, W[:, c] (out x kh*kw) is replaced by its rank-1 SVD
    truncation P[:, c] D[c] (pointwise column times depthwise filter), which is what a
    depthwise-separable layer can express. Exact only for kernels of that form; otherwise the
    output has the original's shape and the relative reconstruction error is reported per
    layer. Every convolution left as it was is in ``report.skipped`` with the reason.

    `example_input`: a tensor, a tuple of arguments or a dict of keyword arguments; with it
    per-layer MACs are those of the real inputs and the report has the output difference.

    Example:
        >>> m, r = to_separable(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)))
        >>> type(m[0]).__name__, m[0].kernel_size, m[0].padding
        ('DepthwiseSeparableConv2d', (3, 3), (1, 1))
    """
    positive_int("to_separable", "min_kernel", min_kernel)

    def build(conv):
        w = conv.weight.detach()
        out_c, in_c, kh, kw = w.shape
        sep = DepthwiseSeparableConv2d(**_conv_args(conv))
        mats = w.permute(1, 0, 2, 3).reshape(in_c, out_c, kh * kw)      # per input channel
        u, s, vh = torch.linalg.svd(mats, full_matrices=False)
        with torch.no_grad():
            sep.depthwise.weight.copy_(vh[:, 0, :].reshape(in_c, 1, kh, kw))
            sep.pointwise.weight.copy_((u[:, :, 0] * s[:, :1]).t().reshape(out_c, in_c, 1, 1))
            if conv.bias is not None:
                sep.pointwise.bias.copy_(conv.bias.detach())
        approx = torch.einsum("oc,cij->ocij", sep.pointwise.weight[:, :, 0, 0], sep.depthwise.weight[:, 0])
        return sep, "DepthwiseSeparableConv2d", {"reconstruction_error": _relative_error(approx, w)}

    return _replace_convs(model, "to_separable", example_input, min_kernel, build)


def decompose(model: nn.Module, rank: int | None = None, energy: float | None = None,
              example_input=None):
    """Replace every nn.Conv2d (groups=1, kernel >= 2 in both dimensions) by a rank-r
    SpatiallySeparableConv2d with the same attributes, from the SVD of each output channel's
    kernel reshaped (C_in * kh, kw) (Jaderberg et al. 2014). Give `rank` (>= 1), or `energy`
    in (0, 1] to keep, per layer, the smallest rank whose singular values hold that fraction
    of every output channel's squared norm. At full rank (kw) the layer computes the original
    convolution (to float rounding). A layer is replaced only if that strictly lowers both its
    parameters and its MACs; otherwise ``report.skipped`` says what it would have cost. The
    relative reconstruction error of each replaced layer is reported.

    Example:
        >>> m, r = decompose(nn.Sequential(nn.Conv2d(4, 8, 3)), rank=1)
        >>> r.layers[0]["to"], r.layers[0]["params_after"] < r.layers[0]["params_before"]
        ('SpatiallySeparableConv2d rank 1 (of 3)', True)
        >>> m, r = decompose(nn.Sequential(nn.Conv2d(4, 8, 3)), rank=3)   # full rank costs more
        >>> r.skipped[0]["reason"].startswith("SpatiallySeparableConv2d rank 3 (of 3) would cost")
        True
    """
    if (rank is None) == (energy is None):
        fail("decompose", "give exactly one of `rank` and `energy`.", f"rank={rank!r}, energy={energy!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        fail("decompose", "`rank` must be a positive int.", f"rank={rank!r}")
    if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float))):
        fail("decompose", "`energy` must be a number in (0, 1].", f"energy={energy!r}", TypeError)
    if energy is not None and not (0 < energy <= 1):
        fail("decompose", "`energy` must be in (0, 1].", f"energy={energy!r}")

    def build(conv):
        w = conv.weight.detach()
        out_c, in_c, kh, kw = w.shape
        u, s, vh = torch.linalg.svd(w.reshape(out_c, in_c * kh, kw), full_matrices=False)
        if energy is not None:
            cum = (s ** 2).cumsum(1) / (s ** 2).sum(1, keepdim=True).clamp_min(1e-30)
            r = min(int((cum < energy).sum(1).max().item()) + 1, s.shape[1])
        else:
            r = min(rank, s.shape[1])
        layer = SpatiallySeparableConv2d(**_conv_args(conv), rank=r)
        with torch.no_grad():
            v = (u[:, :, :r] * s[:, None, :r]).permute(0, 2, 1)          # (out, r, in*kh)
            layer.vertical.weight.copy_(v.reshape(out_c * r, in_c, kh, 1))
            layer.horizontal.weight.copy_(vh[:, :r, :].reshape(out_c, r, 1, kw))
            if conv.bias is not None:
                layer.horizontal.bias.copy_(conv.bias.detach())
        return layer, f"SpatiallySeparableConv2d rank {r} (of {s.shape[1]})", {
            "rank": r, "full_rank": s.shape[1], "reconstruction_error": _relative_error(layer.full_weight(), w)}

    return _replace_convs(model, "decompose", example_input, 2, build)


def to_versatile(model: nn.Module, example_input=None, delta: int = 0, g: int = 1):
    """Replace every square, odd k x k nn.Conv2d (k > 1, groups=1, out_channels divisible by
    the sub-filter count) by a VersatileConv2d with the same attributes, with spatial
    sub-filters (and channel sub-filters if `delta` > 0). Primary filter p starts from the
    original filter p * secondaries: a warm start, not an equivalent layer (same output shape,
    other values); versatile networks are meant to be (re)trained or fine-tuned
    (:func:`sepconv.convert.finetune`). Skipped convolutions are reported with the reason.

    Example:
        >>> m, r = to_versatile(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)))
        >>> r.params_after < r.params_before, m[0].stride
        (True, (1, 1))
    """
    g = positive_int("to_versatile", "g", g)
    if isinstance(delta, bool) or not isinstance(delta, int) or delta < 0 or delta % g:
        fail("to_versatile", "`delta` must be an int >= 0 and a multiple of `g`.", f"delta={delta!r}, g={g}")

    def build(conv):
        (kh, kw), c = conv.kernel_size, conv.in_channels
        if kh != kw:
            return f"kernel {kh}x{kw} is not square (sub-filters are nested squares)"
        if kh % 2 == 0:
            return f"kernel {kh}x{kw} is even (sub-filters share a centre)"
        per = ((kh + 1) // 2) * (delta // g + 1)
        if conv.out_channels % per:
            return f"out_channels {conv.out_channels} is not a multiple of the {per} sub-filters per primary filter"
        if delta >= c or c % g:
            return f"in_channels {c} does not fit delta={delta}, g={g} (needs delta < in_channels, g | in_channels)"
        layer = VersatileConv2d(**_conv_args(conv), delta=delta, g=g)
        with torch.no_grad():
            layer.weight.copy_(conv.weight.detach()[::per])
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.detach())
        return layer, f"VersatileConv2d ({per} sub-filters per primary)", {}

    return _replace_convs(model, "to_versatile", example_input, 3, build)
