"""`sepconv demo`, the main job: train a small MobileNet three ways on scikit-learn's digits
(standard convolutions, depthwise-separable with auto algorithms, versatile filters) and
compare parameters, MACs, test accuracy, latency per image and the speedup of
optimize_for_inference, in one table, a JSON file and a PNG plot."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from ._optional import pyplot, require
from .timing import Candidate, compare

VARIANTS = [("standard", "mobilenet_v1_small_standard"),
            ("separable", "mobilenet_v1_small"),
            ("versatile", "mobilenet_v1_small_versatile")]


def _latencies_ms(fns: dict, x, rounds=40) -> dict:
    """Median ms per call of each fn(x), timed in interleaved rounds so that the machine's
    drift (large on shared cores) hits every network alike."""
    with torch.inference_mode():
        results = compare([Candidate(name, lambda fn=fn: fn(x)) for name, fn in fns.items()], rounds=rounds,
                          budget_s=20, drop_factor=1e9)
    return {r.name: r.median * 1e3 for r in results}


def run_variants(epochs=12, seeds=(0,), size=16, alpha=0.5, progress=True, out=None) -> list[dict]:
    from .analysis import count
    from .convert import optimize_for_inference
    from .data import digits
    from .models import create_model
    from .train import train
    from .train.loop import evaluate

    train_set, test_set = digits(size)
    rows, fns = [], {}
    x1 = torch.randn(1, 1, size, size)
    for label, model_id in VARIANTS:
        accs, seconds = [], []
        for seed in seeds:
            torch.manual_seed(seed)
            model = create_model(model_id, alpha=alpha)
            ckpt = Path(out) / "checkpoints" / f"{label}_seed{seed}" if out else None
            r = train(model, train_set, test_set, epochs=epochs, seed=seed, checkpoint_dir=ckpt,
                      resume=False, progress=progress, label=f"{label:<9} seed {seed}")
            accs.append(r.test_accuracy)
            seconds.append(r.seconds)
        model.eval()
        cost = count(model, x1).total
        eager = model.to(memory_format=torch.channels_last)
        fast = optimize_for_inference(model, x1)
        with torch.inference_mode():
            diff = (fast(x1) - model(x1)).abs().max().item()
        # bfloat16 inference: the same optimized model in bfloat16, scored on the test set
        # beside its float32 twin, so the accuracy it costs is measured, not assumed
        fast_bf16 = optimize_for_inference(model, x1, dtype=torch.bfloat16)
        acc_fp32, acc_bf16 = evaluate(fast, test_set), evaluate(fast_bf16, test_set)
        fns.update({f"{label} eager": lambda t, m=eager: m(t.contiguous(memory_format=torch.channels_last)),
                    f"{label} optimized": fast, f"{label} bf16": fast_bf16})
        rows.append({"network": label, "model": model_id, "params": cost.params, "macs": cost.macs,
                     "test_accuracy_mean": statistics.mean(accs), "test_accuracy_per_seed": accs,
                     "train_seconds_mean": statistics.mean(seconds), "optimized_max_abs_diff": diff,
                     "optimized_test_accuracy": acc_fp32, "bf16_test_accuracy": acc_bf16})
    ms = _latencies_ms(fns, x1)
    for row in rows:
        label = row["network"]
        row.update({"latency_ms_per_image": ms[f"{label} eager"], "optimized_latency_ms_per_image":
                    ms[f"{label} optimized"], "optimize_speedup": ms[f"{label} eager"] / ms[f"{label} optimized"],
                    "bf16_latency_ms_per_image": ms[f"{label} bf16"]})
    return rows


def print_table(rows) -> None:
    Console = require("rich.console", "the demo's table").Console
    Table = require("rich.table", "the demo's table").Table

    base = rows[0]
    t = Table(title="digits (scikit-learn), small MobileNet, test accuracy and cost per image")
    # bf16 acc: the optimized model in bfloat16 on the test set (last seed), and its change
    # against the same optimized model in float32, in points
    for col in ("network", "params", "MACs", "test acc", "vs standard", "latency ms", "optimized ms", "speedup",
                "bf16 ms", "bf16 acc (vs fp32)"):
        t.add_column(col, justify="left" if col == "network" else "right")
    for r in rows:
        t.add_row(r["network"], f"{r['params']:,} ({r['params'] / base['params']:.2f}x)",
                  f"{r['macs']:,} ({r['macs'] / base['macs']:.2f}x)",
                  f"{r['test_accuracy_mean'] * 100:.2f}%",
                  f"{(r['test_accuracy_mean'] - base['test_accuracy_mean']) * 100:+.2f} pt",
                  f"{r['latency_ms_per_image']:.3f}", f"{r['optimized_latency_ms_per_image']:.3f}",
                  f"{r['optimize_speedup']:.2f}x", f"{r['bf16_latency_ms_per_image']:.3f}",
                  f"{r['bf16_test_accuracy'] * 100:.2f}% ({(r['bf16_test_accuracy'] - r['optimized_test_accuracy']) * 100:+.2f})")
    Console(width=max(150, Console().width)).print(t)


def plot(rows, path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["macs"], r["test_accuracy_mean"] * 100, s=40)
        ax.annotate(f"{r['network']}\n{r['params']:,} params", (r["macs"], r["test_accuracy_mean"] * 100),
                    fontsize=8, xytext=(5, -12), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image (log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("digits: accuracy against cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(args) -> int:
    # the table's and the plot's packages are checked before minutes of training, not after
    require("rich", "the demo's table")
    pyplot()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = run_variants(epochs=args.epochs, seeds=tuple(range(args.seeds)), size=args.size,
                        alpha=args.alpha, progress=not args.quiet, out=out)
    print_table(rows)
    (out / "demo.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / "demo.png")
    print(f"wrote {out / 'demo.json'} and {out / 'demo.png'} in {time.perf_counter() - t0:.0f} s")
    return 0
