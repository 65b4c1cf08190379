"""`sepconv demo`: the main job. For now a placeholder (issue 6 grows it into training three
networks on digits): it compares a standard 3x3 convolution with its depthwise-separable
replacement on parameters, output shape and measured latency, and shows the auto plan."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from .algorithms import explain
from .layers import DepthwiseSeparableConv2d


def _median_ms(fn, runs=20):
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def run_demo(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, 64, 56, 56).contiguous(memory_format=torch.channels_last)
    standard = nn.Conv2d(64, 128, 3, padding=1, bias=False).eval()
    separable = DepthwiseSeparableConv2d(64, 128, 3, padding=1).eval()
    rows = []
    with torch.no_grad():
        for name, layer in (("nn.Conv2d 3x3", standard), ("DepthwiseSeparableConv2d", separable)):
            rows.append({"layer": name, "params": sum(p.numel() for p in layer.parameters()),
                         "latency_ms": round(_median_ms(lambda: layer(x)), 4)})
    print(f"{'layer':<28}{'params':>10}{'latency ms':>12}   input (1, 64, 56, 56), channels_last")
    for r in rows:
        print(f"{r['layer']:<28}{r['params']:>10,}{r['latency_ms']:>12.3f}")
    print()
    print(explain((1, 64, 56, 56), padding=1))
    (out / "demo.json").write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {out / 'demo.json'}")
    return 0
