"""`sepconv bench layers`: every MobileNetV1 depthwise shape, PyTorch against each sepconv
algorithm and "auto", with medians, ratios to the best PyTorch path, GB/s and GFLOP/s."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import algorithms
from ..functional.depthwise import depthwise_conv2d
from ..spec import depthwise_spec
from ..timing import Candidate, compare, copy_bandwidth, steady_allocator

# (channels, input size) of MobileNetV1-224's depthwise layers.
MOBILENET_DW_SHAPES = [(32, 112), (64, 112), (128, 56), (256, 28), (512, 14), (1024, 7)]

# Timed calls per candidate and shape. Single calls here spread by +-25% (10th to 90th
# percentile): with 25 rounds the medians of two candidates running the same kernel differed
# by 4-8% typically and up to 23-46% per run; with 60, by 3-4% and up to 13-19% (a round
# costs 5-60 ms).
LAYER_ROUNDS = 60


def depthwise_traffic(spec, training: bool = False) -> tuple[int, int]:
    """(bytes, FLOPs) of one depthwise call: input, weight and output each moved once (the
    compulsory traffic), FLOPs = 2 * MACs with MACs = outputs * kh * kw. A training step
    adds the backward pass: dy, x and the weight read, dx and dw written (3 x + 2 y + 3 w in
    all), and twice the forward FLOPs."""
    item = torch.finfo(spec.dtype).bits // 8
    oh, ow = spec.out_size
    outputs = spec.batch * spec.out_channels * oh * ow
    inputs = spec.batch * spec.channels * spec.height * spec.width
    weights = spec.out_channels * spec.kernel_size[0] * spec.kernel_size[1]
    flops = 2 * outputs * spec.kernel_size[0] * spec.kernel_size[1]
    if training:
        return (3 * inputs + 2 * outputs + 3 * weights) * item, 3 * flops
    return (inputs + outputs + weights) * item, flops


def bench_shape(c, h, stride, batch, dtype=torch.float32, rounds=LAYER_ROUNDS, training=False) -> dict:
    g = torch.Generator().manual_seed(0)
    x_nchw = torch.randn(batch, c, h, h, generator=g).to(dtype)
    x = x_nchw.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c, 1, 3, 3, generator=g) / 3).to(dtype)
    spec = depthwise_spec("bench", x, w.requires_grad_(training), None, stride, 1, 1)
    ref64 = F.conv2d(x.double(), w.detach().double(), None, stride, 1, 1, c)
    scale = algorithms.error_scale(x, w, None)

    def step(fn, inp):
        if not training:
            return fn(inp)
        xs = inp.detach().requires_grad_()
        y = fn(xs)
        y.backward(torch.ones_like(y))
        return y

    mode = torch.enable_grad if training else torch.no_grad
    candidates = {
        "torch_nchw": (lambda: step(lambda t: F.conv2d(t, w, None, stride, 1, 1, c), x_nchw), 2),
        "torch_channels_last": (lambda: step(lambda t: F.conv2d(t, w, None, stride, 1, 1, c), x), 2),
    }
    for algo in algorithms.list_algorithms(spec):
        candidates[algo.name] = (
            lambda a=algo.name: step(lambda t: depthwise_conv2d(t, w, None, stride, 1, 1, a), x),
            algo.error_eps)
    candidates["auto"] = (lambda: step(lambda t: depthwise_conv2d(t, w, None, stride, 1, 1), x), None)
    with mode():
        checked = {}
        for name, (fn, eps) in candidates.items():
            y = fn().detach().double()
            bound = (eps if eps is not None else algorithms.get_algorithm(
                algorithms.tuner.plan(spec).choice).error_eps) * torch.finfo(dtype).eps
            checked[name] = bool(((y - ref64).abs() <= bound * scale).all())
        results = compare([Candidate(n, fn) for n, (fn, _) in candidates.items()], rounds=rounds)
    nbytes, flops = depthwise_traffic(spec, training)
    best_torch = min(r.median for r in results if r.name.startswith("torch"))
    return {
        "channels": c, "size": h, "stride": stride, "batch": batch, "dtype": str(dtype).split(".")[-1],
        "mode": "forward+backward" if training else "forward",
        "auto_choice": algorithms.tuner.plan(spec).choice,
        "results": {r.name: {"median_ms": r.median * 1e3, "speedup_vs_best_torch": best_torch / r.median,
                             "GB_s": nbytes / r.median / 1e9, "GFLOP_s": flops / r.median / 1e9,
                             "output_ok": checked[r.name], "dropped": r.dropped}
                    for r in results},
    }


def bench_layers(batches=(1, 8), strides=(1, 2), shapes=MOBILENET_DW_SHAPES, rounds=LAYER_ROUNDS,
                 training=False, progress=print) -> list[dict]:
    steady_allocator()
    # inputs of the large layers at batch 8 (13-26 MB) come from DRAM: this bounds them
    bandwidth = copy_bandwidth()
    rows = []
    for batch in batches:
        for c, h in shapes:
            for s in strides:
                row = bench_shape(c, h, s, batch, rounds=rounds, training=training)
                row["copy_GB_s"] = bandwidth
                rows.append(row)
                a = row["results"]["auto"]
                progress(f"batch {batch} C={c:<5} {h:>3}x{h:<3} stride {s}: auto={row['auto_choice']:<14}"
                         f" {a['median_ms']:.4f} ms  x{a['speedup_vs_best_torch']:.2f} vs best PyTorch")
    return rows


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary(rows) -> dict:
    out = {}
    for batch in sorted({r["batch"] for r in rows}):
        sel = [r["results"]["auto"]["speedup_vs_best_torch"] for r in rows if r["batch"] == batch]
        out[f"batch {batch}"] = {"geomean_auto_speedup": geomean(sel), "min_auto_speedup": min(sel)}
    out["copy_GB_s"] = rows[0].get("copy_GB_s")
    return out


def markdown(rows) -> str:
    names = list(dict.fromkeys(n for r in rows for n in r["results"]))
    head = "| batch | C | size | stride | " + " | ".join(names) + " | auto picks |"
    lines = [head, "|" + "---|" * (len(names) + 5)]
    for r in rows:
        cells = []
        for n in names:
            res = r["results"].get(n)
            if res is None:
                cells.append("-")
                continue
            mark = "" if res["output_ok"] else " (wrong)"
            mark += " (dropped)" if res["dropped"] else ""
            cells.append(f"{res['median_ms']:.3f} ms x{res['speedup_vs_best_torch']:.2f}{mark}")
        lines.append(f"| {r['batch']} | {r['channels']} | {r['size']} | {r['stride']} | "
                     + " | ".join(cells) + f" | {r['auto_choice']} |")
    return "\n".join(lines)


def speedups_markdown(rows) -> str:
    """The compact table of docs/algorithms.md: best PyTorch time, then each sepconv
    algorithm's speedup over it, auto's choice, speedup and traffic last."""
    names = [n for n in dict.fromkeys(n for r in rows for n in r["results"])
             if not n.startswith("torch") and n != "auto"]
    # compulsory bytes / time, against the copy bandwidth measured in the same run
    lines = ["| batch | C | size | stride | best PyTorch ms | " + " | ".join(names)
             + " | auto picks | auto | auto GB/s (copy) |",
             "|" + "---|" * (len(names) + 8)]
    for r in rows:
        res = r["results"]
        best = min(v["median_ms"] for k, v in res.items() if k.startswith("torch"))
        cells = [f"{res[n]['speedup_vs_best_torch']:.2f}x" if n in res else "-" for n in names]
        lines.append(f"| {r['batch']} | {r['channels']} | {r['size']} | {r['stride']} | {best:.3f} | "
                     + " | ".join(cells) + f" | {r['auto_choice']} | {res['auto']['speedup_vs_best_torch']:.2f}x |"
                     + f" {res['auto']['GB_s']:.0f} ({r.get('copy_GB_s', 0):.0f}) |")
    return "\n".join(lines)


def plot(rows, path) -> None:
    from .._optional import pyplot

    plt = pyplot()

    names = [n for n in dict.fromkeys(n for r in rows for n in r["results"]) if n != "torch_nchw"]
    labels = [f"b{r['batch']} {r['channels']}x{r['size']} s{r['stride']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.6), 5))
    width = 0.8 / len(names)
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours: tab10's 10 repeat past ten series
    for i, n in enumerate(names):
        ax.bar([k + i * width for k in range(len(rows))],
               [r["results"].get(n, {}).get("speedup_vs_best_torch", 0) for r in rows], width, label=n,
               color="black" if n == "auto" else colors[i % len(colors)])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks([k + 0.4 for k in range(len(rows))], labels, rotation=70, fontsize=7)
    ax.set_ylabel("speedup vs best PyTorch path (median, log)")
    ax.set_title(f"Depthwise 3x3, {rows[0]['mode']}, {torch.get_num_threads()} threads")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rows, out_dir) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mode = rows[0]["mode"].replace("+", "_")
    (out / f"depthwise_{mode}.json").write_text(json.dumps({"summary": summary(rows), "rows": rows}, indent=1))
    (out / f"depthwise_{mode}.md").write_text(markdown(rows) + "\n")
    (out / f"depthwise_{mode}_speedups.md").write_text(speedups_markdown(rows) + "\n")
    plot(rows, out / f"depthwise_{mode}.png")
    return summary(rows)
