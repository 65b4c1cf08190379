"""Model conversions. Each returns ``(new_model, ConversionReport)``; the input model is not
modified. Conversions walk ``nn.Sequential`` containers and the library's own blocks, whose
child order is their execution order (the only place "a conv followed by a BN" is sure)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .._validation import fail
from ..layers import DepthwiseConv2d, DepthwiseSeparableConv2d, SpatiallySeparableConv2d, VersatileConv2d


@dataclass
class ConversionReport:
    """What a conversion changed: per-layer rows, totals, and (with an example input) MACs,
    output difference and measured latency before and after."""

    kind: str
    layers: list[dict] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    max_abs_diff: float | None = None
    rel_diff: float | None = None
    latency_ms_before: float | None = None
    latency_ms_after: float | None = None

    def __str__(self):
        lines = [f"{self.kind}: {len(self.layers)} layer(s) changed",
                 f"  parameters {self.params_before:,} -> {self.params_after:,}"]
        if self.macs_before is not None:
            lines.append(f"  MACs       {self.macs_before:,} -> {self.macs_after:,}")
        if self.max_abs_diff is not None:
            lines.append(f"  output difference: max abs {self.max_abs_diff:.3g}, relative {self.rel_diff:.3g}")
        if self.latency_ms_before is not None:
            lines.append(f"  latency    {self.latency_ms_before:.3f} ms -> {self.latency_ms_after:.3f} ms")
        for row in self.layers:
            extra = "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}"
                            for k, v in row.items() if k not in ("name", "from", "to"))
            lines.append(f"  {row['name']}: {row['from']} -> {row['to']}{extra}")
        return "\n".join(lines)


def finish_report(report, before, after, example_input=None, measure=False):
    report.params_before = sum(p.numel() for p in before.parameters())
    report.params_after = sum(p.numel() for p in after.parameters())
    if example_input is not None:
        from ..analysis import count

        before_mode, after_mode = before.training, after.training
        before.eval(), after.eval()
        report.macs_before = count(before, example_input).total.macs
        report.macs_after = count(after, example_input).total.macs
        with torch.no_grad():
            a, b = before(example_input), after(example_input)
        report.max_abs_diff = (a - b).abs().max().item()
        report.rel_diff = ((a - b).norm() / a.norm().clamp_min(1e-30)).item()
        if measure:
            from ..timing import median_seconds

            with torch.no_grad():
                report.latency_ms_before = median_seconds(lambda: before(example_input)) * 1e3
                report.latency_ms_after = median_seconds(lambda: after(example_input)) * 1e3
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

def _eligible_conv(m, min_kernel=2):
    return (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"
            and min(m.kernel_size) >= min_kernel and isinstance(m.padding, tuple))


def to_separable(model: nn.Module, example_input=None, min_kernel: int = 3):
    """Replace every standard nn.Conv2d (groups=1, kernel >= `min_kernel`) by a
    DepthwiseSeparableConv2d initialised with the best separable approximation of its kernel:
    for each input channel c, W[:, c] (out x kh*kw) is replaced by its rank-1 SVD truncation
    P[:, c] D[c] (pointwise column times depthwise filter), which is exactly what a
    depthwise-separable layer can express. The relative reconstruction error is reported.

    Example:
        >>> m, r = to_separable(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)))
        >>> type(m[0]).__name__
        'DepthwiseSeparableConv2d'
    """
    new = copy.deepcopy(model)
    report = ConversionReport("to_separable")
    for parent, name, child, full in list(_walk(new)):
        if not _eligible_conv(child, min_kernel):
            continue
        w = child.weight.detach()
        out_c, in_c, kh, kw = w.shape
        sep = DepthwiseSeparableConv2d(in_c, out_c, (kh, kw), child.stride, child.padding,
                                       child.dilation, bias=child.bias is not None,
                                       device=w.device, dtype=w.dtype)
        mats = w.permute(1, 0, 2, 3).reshape(in_c, out_c, kh * kw)      # per input channel
        u, s, vh = torch.linalg.svd(mats, full_matrices=False)
        with torch.no_grad():
            sep.depthwise.weight.copy_(vh[:, 0, :].reshape(in_c, 1, kh, kw))
            sep.pointwise.weight.copy_((u[:, :, 0] * s[:, :1]).t().reshape(out_c, in_c, 1, 1))
            if child.bias is not None:
                sep.pointwise.bias.copy_(child.bias.detach())
        approx = torch.einsum("oc,cij->ocij", sep.pointwise.weight[:, :, 0, 0], sep.depthwise.weight[:, 0])
        err = ((approx - w).norm() / w.norm().clamp_min(1e-30)).item()
        setattr(parent, name, sep)
        report.layers.append({"name": full, "from": f"Conv2d {in_c}->{out_c} {kh}x{kw}",
                              "to": "DepthwiseSeparableConv2d", "reconstruction_error": err})
    return new, finish_report(report, model, new, example_input)


def decompose(model: nn.Module, rank: int | None = None, energy: float | None = None,
              example_input=None):
    """Replace every k x k nn.Conv2d (k > 1, groups=1) by a rank-r SpatiallySeparableConv2d
    from the SVD of each output channel's kernel reshaped (C_in * kh, kw) (Jaderberg et al.
    2014). Give `rank`, or `energy` in (0, 1] to keep, per layer, the smallest rank whose
    singular values hold that fraction of every output channel's squared norm.
    The relative reconstruction error of each layer is reported.

    Example:
        >>> m, r = decompose(nn.Sequential(nn.Conv2d(4, 8, 3)), rank=3)   # rank kw: exact
        >>> r.layers[0]["reconstruction_error"] < 1e-5
        True
    """
    if (rank is None) == (energy is None):
        fail("decompose", "give exactly one of `rank` and `energy`.", f"rank={rank!r}, energy={energy!r}")
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        fail("decompose", "`rank` must be a positive int.", f"rank={rank!r}")
    if energy is not None and not (0 < energy <= 1):
        fail("decompose", "`energy` must be in (0, 1].", f"energy={energy!r}")
    new = copy.deepcopy(model)
    report = ConversionReport("decompose")
    for parent, name, child, full in list(_walk(new)):
        if not (_eligible_conv(child) and child.dilation == (1, 1)):
            continue
        w = child.weight.detach()
        out_c, in_c, kh, kw = w.shape
        u, s, vh = torch.linalg.svd(w.reshape(out_c, in_c * kh, kw), full_matrices=False)
        if energy is not None:
            cum = (s ** 2).cumsum(1) / (s ** 2).sum(1, keepdim=True).clamp_min(1e-30)
            r = min(int((cum < energy).sum(1).max().item()) + 1, s.shape[1])
        else:
            r = min(rank, kw, in_c * kh)
        layer = SpatiallySeparableConv2d(in_c, out_c, (kh, kw), child.stride, child.padding, rank=r,
                                         bias=child.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            v = (u[:, :, :r] * s[:, None, :r]).permute(0, 2, 1)          # (out, r, in*kh)
            layer.vertical.weight.copy_(v.reshape(out_c * r, in_c, kh, 1))
            layer.horizontal.weight.copy_(vh[:, :r, :].reshape(out_c, r, 1, kw))
            if child.bias is not None:
                layer.horizontal.bias.copy_(child.bias.detach())
        err = ((layer.full_weight() - w).norm() / w.norm().clamp_min(1e-30)).item()
        setattr(parent, name, layer)
        report.layers.append({"name": full, "from": f"Conv2d {in_c}->{out_c} {kh}x{kw}",
                              "to": f"SpatiallySeparableConv2d rank {r}", "reconstruction_error": err})
    return new, finish_report(report, model, new, example_input)


def to_versatile(model: nn.Module, example_input=None, delta: int = 0, g: int = 1):
    """Replace every odd k x k nn.Conv2d (k > 1, groups=1, out_channels divisible by the
    sub-filter count) by a VersatileConv2d with spatial sub-filters (and channel sub-filters
    if `delta` > 0). Primary filter p starts from the original filter p * secondaries: a warm
    start, not an equivalent layer; versatile networks are meant to be (re)trained.

    Example:
        >>> m, r = to_versatile(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)))
        >>> r.params_after < r.params_before
        True
    """
    new = copy.deepcopy(model)
    report = ConversionReport("to_versatile")
    for parent, name, child, full in list(_walk(new)):
        if not (_eligible_conv(child, 3) and child.kernel_size[0] == child.kernel_size[1]
                and child.kernel_size[0] % 2 and child.dilation == (1, 1)):
            continue
        k = child.kernel_size[0]
        per = ((k + 1) // 2) * (delta // g + 1)
        if child.out_channels % per or delta >= child.in_channels or child.in_channels % g or delta % g:
            continue
        layer = VersatileConv2d(child.in_channels, child.out_channels, k, child.stride, child.padding,
                                bias=child.bias is not None, delta=delta, g=g,
                                device=child.weight.device, dtype=child.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(child.weight.detach()[::per])
            if child.bias is not None:
                layer.bias.copy_(child.bias.detach())
        setattr(parent, name, layer)
        report.layers.append({"name": full, "from": f"Conv2d {child.in_channels}->{child.out_channels} {k}x{k}",
                              "to": f"VersatileConv2d ({per} sub-filters per primary)"})
    return new, finish_report(report, model, new, example_input)
