"""Versatile convolutions against their standard twins (nn.Conv2d with as many output channels),
layer by layer on VGG-16/ResNet-50 shapes (3x3, and the same shapes with 5x5 and 7x7 kernels),
batch 1 and 8, float32, NCHW as users call them: inference (no_grad), training (forward and
backward), and both after `optimize_for_inference`. Medians of interleaved rounds, 2 threads,
the ratio versatile / standard (the issue's targets: <= 0.7 at 3x3, <= 0.6 at 5x5 and 7x7).

    python benchmarks/bench_versatile.py [--out DIR] [--rounds 11] [--quick]

Then the zoo's versatile networks against their standard twins (same widths, nn.Conv2d
everywhere): ResNet-50 v2, VGG-16 (at 112x112 to keep training rounds short: the classifier's
adaptive pooling takes any size) and the demo's MobileNet-style net on digits-sized input.

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


# (label, standard id, versatile id, input shape without batch, model kwargs)
NETWORKS = [
    ("ResNet-50 v2", "resnet50", "resnet50_versatile", (3, 224, 224), {}),
    ("VGG-16 (112x112)", "vgg16", "vgg16_versatile", (3, 112, 112), {}),
    ("demo net (alpha 0.5, 16x16)", "mobilenet_v1_small_standard", "mobilenet_v1_small_versatile", (1, 16, 16),
     {"alpha": 0.5}),
]


def twins(c, k, kw):
    torch.manual_seed(0)
    std = nn.Conv2d(c, c, k, padding=k // 2)
    ver = sepconv.VersatileConv2d(c, c, k, padding=k // 2, **kw)
    return std, ver


def measure(std, ver, x, rounds) -> dict:
    """Medians of inference (no_grad), training (forward + backward) and optimized inference,
    standard against versatile, interleaved."""
    cands = []
    for name, m in (("standard", std), ("versatile", ver)):
        def infer(m=m):
            with torch.no_grad():
                return m(x)

        def train(m=m):
            m(x).sum().backward()

        opt = sepconv.optimize_for_inference(m.eval(), x)
        cands += [Candidate(f"{name} inference", infer), Candidate(f"{name} training", train),
                  Candidate(f"{name} optimized", lambda opt=opt: opt(x))]
    results = {r.name: r for r in compare(cands, rounds=rounds, budget_s=30, drop_factor=1e9)}
    row = {}
    for mode in ("inference", "training", "optimized"):
        s, v = results[f"standard {mode}"], results[f"versatile {mode}"]
        row[mode] = {"standard_ms": s.median * 1e3, "versatile_ms": v.median * 1e3, "standard_spread": s.spread,
                     "versatile_spread": v.spread, "ratio": v.median / s.median}
    return row


def _print(label, n, row):
    print(label, f"b{n}", f"MACs x{row['mac_ratio']:.2f}",
          {m: f"{row[m]['ratio']:.2f}" for m in ("inference", "training", "optimized")}, flush=True)


def bench(rounds: int, batches) -> list[dict]:
    steady_allocator()
    rows = []
    for label, c, h, k, kw in LAYERS:
        for n in batches:
            std, ver = twins(c, k, kw)
            x = torch.randn(n, c, h, h)
            macs = {name: count(m, x[:1]).total.macs for name, m in (("standard", std), ("versatile", ver))}
            row = {"layer": label, "channels": c, "size": h, "kernel": k, "batch": n, **kw,
                   "mac_ratio": macs["versatile"] / macs["standard"], **measure(std, ver, x, rounds)}
            rows.append(row)
            _print(label, n, row)
    return rows


def bench_networks(rounds: int, batches) -> list[dict]:
    from sepconv.models import create_model

    rows = []
    for label, std_id, ver_id, shape, kw in NETWORKS:
        for n in batches:
            torch.manual_seed(0)
            std, ver = create_model(std_id, **kw), create_model(ver_id, **kw)
            x = torch.randn(n, *shape)
            macs = {name: count(m.eval(), x[:1]).total.macs for name, m in (("standard", std), ("versatile", ver))}
            row = {"network": label, "batch": n, "mac_ratio": macs["versatile"] / macs["standard"],
                   "macs": macs, **measure(std, ver, x, max(3, rounds // 2))}
            rows.append(row)
            _print(label, n, row)
    return rows


def _cells(r):
    return " | ".join(f"{r[m]['standard_ms']:.2f} / {r[m]['versatile_ms']:.2f} = **{r[m]['ratio']:.2f}**"
                      for m in ("inference", "training", "optimized"))


def markdown(rows, nets, cpu) -> str:
    lines = [f"CPU: {cpu}, {torch.get_num_threads()} threads, float32, NCHW input. Cells: standard ms / "
             "versatile ms = ratio (medians of interleaved rounds; training = forward + backward; optimized = "
             "optimize_for_inference of each).", "",
             "| layer | C | size | k | batch | MACs ratio | inference | training | optimized |", "|---" * 9 + "|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['channels']} | {r['size']} | {r['kernel']} | {r['batch']} | "
                     f"{r['mac_ratio']:.2f} | " + _cells(r) + " |")
    if nets:
        lines += ["", "| network | batch | MACs ratio | inference | training | optimized |", "|---" * 6 + "|"]
        for r in nets:
            lines.append(f"| {r['network']} | {r['batch']} | {r['mac_ratio']:.2f} | " + _cells(r) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/bench", help="output folder (default %(default)s)")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="batch 1 only")
    p.add_argument("--no-networks", action="store_true", help="layers only")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    batches = (1,) if a.quick else (1, 8)
    rows = bench(a.rounds, batches)
    nets = [] if a.no_networks else bench_networks(a.rounds, batches)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "versatile.json").write_text(json.dumps({"cpu": cpu_name(), "layers": rows, "networks": nets}, indent=1))
    (out / "versatile.md").write_text(markdown(rows, nets, cpu_name()))
    print(markdown(rows, nets, cpu_name()))
