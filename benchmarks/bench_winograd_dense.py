"""Dense (groups=1) 3x3 convolution: sepconv.winograd_conv2d (F(2x2), F(4x4), F(6x6), PyTorch
level, any device; and F(4x4) with its filters transformed once, ahead of the calls) against
oneDNN's convolution (NCHW and channels_last), on VGG/ResNet-like
shapes at batch 1 and 8; medians of interleaved rounds, 2 threads, and each output's max
error against float64 relative to the largest output.

    python benchmarks/bench_winograd_dense.py [--out DIR] [--rounds 15]

Writes winograd_dense.{json,md} into DIR (default out/bench; `--out docs/results` replaces
the committed results).
"""

import argparse
import json
import os
from pathlib import Path

# numpy's OpenBLAS pool competes with torch's threads for the 2 cores (see bench_depthwise.py)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sepconv.timing import Candidate, compare, steady_allocator  # noqa: E402
from sepconv.functional.winograd import winograd_conv2d, winograd_filters  # noqa: E402

# (batch, in_channels, out_channels, size)
SHAPES = [(1, 64, 64, 56), (1, 128, 128, 28), (1, 256, 256, 14), (1, 512, 512, 14),
          (8, 64, 64, 56), (8, 128, 128, 28), (8, 256, 256, 14), (8, 512, 512, 14)]
TILES = (2, 4, 6)


def bench(rounds: int) -> list[dict]:
    steady_allocator()
    rows = []
    for n, c, k, h in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, h, h, generator=g)
        w = torch.randn(k, c, 3, 3, generator=g) / (3 * c ** 0.5)
        xc, wc = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
        ref = F.conv2d(x.double(), w.double(), padding=1)
        peers = {"onednn_nchw": lambda: F.conv2d(x, w, padding=1),
                 "onednn_channels_last": lambda: F.conv2d(xc, wc, padding=1)}
        for t in TILES:
            peers[f"winograd_f{t}x{t}"] = lambda t=t: winograd_conv2d(x, w, padding=1, tile=t)
        # the filters transformed once, as an inference caller holding the weight would
        u4 = winograd_filters(w, 4)
        peers["winograd_f4x4_kept_filters"] = lambda: winograd_conv2d(x, w, padding=1, tile=4, filters=u4)
        with torch.no_grad():
            errors = {name: ((fn().double() - ref).abs().max() / ref.abs().max()).item() for name, fn in peers.items()}
            results = compare([Candidate(name, fn) for name, fn in peers.items()], rounds=rounds, budget_s=10)
        best = min(r.median for r in results if r.name.startswith("onednn"))
        rows.append({"batch": n, "in": c, "out": k, "size": h,
                     "results": {r.name: {"median_ms": r.median * 1e3, "speedup_vs_best_onednn": best / r.median,
                                          "max_rel_error": errors[r.name]} for r in results}})
        print(n, c, k, h, {r.name: f"{best / r.median:.2f}x" for r in results}, flush=True)
    return rows


def markdown(rows) -> str:
    names = list(rows[0]["results"])
    lines = ["| batch | C -> K | size | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    for r in rows:
        cells = [f"{r['results'][n]['median_ms']:.2f} ms x{r['results'][n]['speedup_vs_best_onednn']:.2f} "
                 f"(err {r['results'][n]['max_rel_error']:.0e})" for n in names]
        lines.append(f"| {r['batch']} | {r['in']} -> {r['out']} | {r['size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/bench", help="output folder (default %(default)s)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = bench(a.rounds)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "winograd_dense.json").write_text(json.dumps(rows, indent=1))
    (out / "winograd_dense.md").write_text(markdown(rows))
    print(markdown(rows))
