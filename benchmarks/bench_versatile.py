"""Versatile convolutions against their standard twins (nn.Conv2d with as many output channels),
layer by layer on VGG-16/ResNet-50 shapes (3x3, and the same shapes with 5x5 and 7x7 kernels),
batch 1 and 8, float32, NCHW as users call them: inference (no_grad), training (forward and
backward), and both after `optimize_for_inference`. Medians of interleaved rounds, 2 threads,
the ratio versatile / standard (the issue's targets: <= 0.7 at 3x3, <= 0.6 at 5x5 and 7x7).

    python benchmarks/bench_versatile.py [--out DIR] [--rounds 11] [--quick]

Writes versatile.{json,md} into DIR (default out/bench; `--out docs/results` replaces the
committed results).
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import sepconv  # noqa: E402
from sepconv.analysis import count  # noqa: E402
from sepconv.bench.model import cpu_name  # noqa: E402
from sepconv.timing import Candidate, compare, steady_allocator  # noqa: E402

# (label, channels, size, kernel, versatile kwargs): channels in = out, divisible by the
# sub-filters per primary filter (s = (k+1)/2 spatial, times n_c = 2 with delta = C/8)
LAYERS = [
    ("ResNet-50 layer1 3x3", 64, 56, 3, {}),
    ("ResNet-50 layer2 3x3", 128, 28, 3, {}),
    ("ResNet-50 layer3 3x3", 256, 14, 3, {}),
    ("ResNet-50 layer4 3x3", 512, 7, 3, {}),
    ("VGG-16 conv3 3x3", 256, 56, 3, {}),
    ("VGG-16 conv4 3x3", 512, 28, 3, {}),
    ("VGG-16 conv5 3x3", 512, 14, 3, {}),
    ("ResNet-50 v2 layer2 3x3 (+channel n=2)", 128, 28, 3, {"delta": 16, "g": 16}),
    ("ResNet-50 v2 layer3 1x1 (channel n=2)", 256, 14, 1, {"spatial": False, "delta": 32, "g": 32}),
    ("5x5 at ResNet layer2", 96, 28, 5, {}),
    ("5x5 at ResNet layer3", 192, 14, 5, {}),
    ("5x5 at VGG conv4", 384, 28, 5, {}),
    ("7x7 at ResNet layer2", 128, 28, 7, {}),
    ("7x7 at ResNet layer3", 256, 14, 7, {}),
    ("7x7 at VGG conv4", 512, 28, 7, {}),
]


def twins(c, k, kw):
    torch.manual_seed(0)
    std = nn.Conv2d(c, c, k, padding=k // 2)
    ver = sepconv.VersatileConv2d(c, c, k, padding=k // 2, **kw)
    return std, ver


def bench(rounds: int, batches) -> list[dict]:
    steady_allocator()
    rows = []
    for label, c, h, k, kw in LAYERS:
        for n in batches:
            std, ver = twins(c, k, kw)
            x = torch.randn(n, c, h, h)
            macs = {name: count(m, x[:1]).total.macs for name, m in (("standard", std), ("versatile", ver))}
            cands = []
            for name, m in (("standard", std), ("versatile", ver)):
                def infer(m=m):
                    with torch.no_grad():
                        return m(x)

                def train(m=m):
                    m(x).sum().backward()

                opt = sepconv.optimize_for_inference(m, x)
                cands += [Candidate(f"{name} inference", infer), Candidate(f"{name} training", train),
                          Candidate(f"{name} optimized", lambda opt=opt: opt(x))]
            results = {r.name: r for r in compare(cands, rounds=rounds, budget_s=20, drop_factor=1e9)}
            row = {"layer": label, "channels": c, "size": h, "kernel": k, "batch": n, **kw,
                   "mac_ratio": macs["versatile"] / macs["standard"]}
            for mode in ("inference", "training", "optimized"):
                s, v = results[f"standard {mode}"], results[f"versatile {mode}"]
                row[mode] = {"standard_ms": s.median * 1e3, "versatile_ms": v.median * 1e3,
                             "standard_spread": s.spread, "versatile_spread": v.spread,
                             "ratio": v.median / s.median}
            rows.append(row)
            print(label, f"b{n}", f"MACs x{row['mac_ratio']:.2f}",
                  {m: f"{row[m]['ratio']:.2f}" for m in ("inference", "training", "optimized")}, flush=True)
    return rows


def markdown(rows, cpu) -> str:
    lines = [f"CPU: {cpu}, {torch.get_num_threads()} threads, float32, NCHW input. Cells: standard ms / "
             "versatile ms = ratio (medians of interleaved rounds).", "",
             "| layer | C | size | k | batch | MACs ratio | inference | training | optimized |", "|---" * 9 + "|"]
    for r in rows:
        cells = [f"{r[m]['standard_ms']:.2f} / {r[m]['versatile_ms']:.2f} = **{r[m]['ratio']:.2f}**"
                 for m in ("inference", "training", "optimized")]
        lines.append(f"| {r['layer']} | {r['channels']} | {r['size']} | {r['kernel']} | {r['batch']} | "
                     f"{r['mac_ratio']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/bench", help="output folder (default %(default)s)")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="batch 1 only")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = bench(a.rounds, (1,) if a.quick else (1, 8))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "versatile.json").write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=1))
    (out / "versatile.md").write_text(markdown(rows, cpu_name()))
    print(markdown(rows, cpu_name()))
