"""Roofline: this machine's measured float32 GEMM peak and memory bandwidth (cached on disk),
the lower-bound time of each layer, and optionally its measured time beside it."""

from __future__ import annotations

import json
import statistics
import time

import torch

from .. import algorithms
from .._files import atomic_write
from ..timing import copy_bandwidth, median_seconds
from .counter import CostReport


def measure_peaks() -> dict:
    """Float32 GEMM GFLOP/s (2048^3 matmul) and DRAM bandwidth GB/s (copy of 256 MiB, read +
    write), with the current thread count."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = 2 * n ** 3 / median_seconds(lambda: torch.mm(a, b), runs=7) / 1e9
    return {"gemm_gflops": gemm, "bandwidth_gbs": copy_bandwidth(runs=5), "threads": torch.get_num_threads()}


def machine_peaks(refresh: bool = False) -> dict:
    """:func:`measure_peaks`, measured once per machine, versions and thread count, then read
    from ``<cache>/peaks.json`` (kept in memory where there is no cache folder)."""
    folder = algorithms.cache_dir()
    key = f"{algorithms.machine_fingerprint()}|t{torch.get_num_threads()}"
    path = None if folder is None else folder / "peaks.json"
    try:
        stored = json.loads(path.read_text()) if path is not None else _PEAKS
        stored = stored if isinstance(stored, dict) else {}
    except (OSError, ValueError):
        stored = {}
    if not refresh and isinstance(stored.get(key), dict) and "gemm_gflops" in stored[key]:
        return stored[key]
    stored[key] = measure_peaks()
    _PEAKS[key] = stored[key]
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: json.dump(stored, f, indent=1))
        except OSError:
            pass  # measured again by the next process
    return stored[key]


_PEAKS: dict = {}


def roofline(report: CostReport, peaks: dict) -> list[dict]:
    """Per layer: lower-bound time max(FLOPs / peak, bytes / bandwidth), the bound that sets it,
    and the measured time when the report has one."""
    peak, bw = peaks["gemm_gflops"] * 1e9, peaks["bandwidth_gbs"] * 1e9
    ridge = peak / bw
    rows = []
    for c in report.layers:
        if not c.bytes:
            continue
        t_compute, t_memory = c.flops / peak, c.bytes / bw
        row = {"layer": c.name, "type": c.type, "flops": c.flops, "bytes": c.bytes,
               "intensity": c.intensity, "bound": "memory" if c.intensity < ridge else "compute",
               "lower_bound_ms": max(t_compute, t_memory) * 1e3}
        if c.time_s is not None:
            row["measured_ms"] = c.time_s * 1e3
            row["attained_gflops"] = c.flops / c.time_s / 1e9
            row["fraction_of_bound"] = max(t_compute, t_memory) / c.time_s
        rows.append(row)
    return rows


def measure_layers(model, inputs, report: CostReport, runs: int = 20) -> None:
    """Fill ``time_s`` of each leaf layer of `report` with its median time inside the model
    (forward hooks around each leaf; the model runs `runs` times)."""
    modules = dict(model.named_modules())
    samples = {c.name: [] for c in report.layers}
    starts = {}
    handles = []
    for name in samples:
        mod = modules[name]
        handles.append(mod.register_forward_pre_hook(
            lambda m, a, n=name: starts.__setitem__(n, time.perf_counter())))
        handles.append(mod.register_forward_hook(
            lambda m, a, o, n=name: samples[n].append(time.perf_counter() - starts[n])))
    try:
        with torch.no_grad():
            model(*inputs)  # warm-up: tuning and first-call allocation
            for s in samples.values():
                s.clear()
            for _ in range(runs):
                model(*inputs)
    finally:
        for h in handles:
            h.remove()
    for c in report.layers:
        if samples[c.name]:
            c.time_s = statistics.median(samples[c.name])


def plot_roofline(rows: list[dict], peaks: dict, path, title: str = "") -> None:
    from .._optional import pyplot

    plt = pyplot()

    peak, bw = peaks["gemm_gflops"], peaks["bandwidth_gbs"]
    rows = [r for r in rows if r["flops"] > 0]  # zero-FLOP layers (ReLU, BN) have no place on log axes
    xs = [r["intensity"] for r in rows]
    lo, hi = min(xs + [0.1]) / 2, max(xs + [peak / bw]) * 4
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(grid, [min(peak, bw * g) for g in grid], color="black", label="roofline")
    by_type: dict[str, list] = {}
    for r in rows:
        y = r.get("attained_gflops") or r["flops"] / (r["lower_bound_ms"] / 1e3) / 1e9
        by_type.setdefault(r["type"], []).append((r["intensity"], y))
    for kind, pts in by_type.items():
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, label=kind)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("GFLOP/s (" + ("measured" if rows and "attained_gflops" in rows[0] else "bound") + ")")
    ax.set_title(title or f"Roofline: {peak:.0f} GFLOP/s fp32 GEMM, {bw:.1f} GB/s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
