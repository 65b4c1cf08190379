"""Measured error of every depthwise algorithm against float64: the "measured" columns of
docs/guide.md's algorithm table (the bounds in sepconv.algorithms sit 1.3-2.5x above them).

    python benchmarks/measure_error.py

Random normal inputs, three shapes, four seeds, float32, padding 1. The error is normwise per
output channel, in eps units: max |y - y64| / (eps * error_scale(x, w, b)).
"""

import torch
import torch.nn.functional as F

from sepconv import algorithms
from sepconv.functional.depthwise import depthwise_conv2d
from sepconv.spec import depthwise_spec

SHAPES = [(2, 32, 28, 28), (1, 64, 56, 56), (4, 128, 14, 14)]
SEEDS = range(4)


def measure(name: str) -> tuple[float, float] | None:
    """(max, mean) normwise error in eps units over all outputs, or None if not eligible."""
    worst, total, count = 0.0, 0.0, 0
    for shape in SHAPES:
        for seed in SEEDS:
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last)
            w, b = torch.randn(shape[1], 1, 3, 3, generator=g), torch.randn(shape[1], generator=g)
            spec = depthwise_spec("measure", x, w, b, 1, 1, 1)
            if algorithms.get_algorithm(name).why_not(spec) is not None:
                return None
            y = depthwise_conv2d(x, w, b, 1, 1, 1, algorithm=name).double()
            y64 = F.conv2d(x.double(), w.double(), b.double(), 1, 1, 1, shape[1])
            scale = algorithms.error_scale(x, w, b) * torch.finfo(torch.float32).eps
            err = (y - y64).abs() / scale
            worst, total, count = max(worst, err.max().item()), total + err.sum().item(), count + err.numel()
    return worst, total / count


if __name__ == "__main__":
    with torch.no_grad():
        base = measure("direct")[1]
        for algo in algorithms.list_algorithms():
            err = measure(algo.name)
            shown = ("not eligible here" if err is None else
                     f"max {err[0]:.2f} eps, mean {err[1] / base:.1f}x direct's (bound {algo.error_eps:g} eps)")
            print(f"{algo.name:24s} {shown}")
