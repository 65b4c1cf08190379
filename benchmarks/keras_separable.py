"""Keras SeparableConv2D on the torch backend, forward + backward: sepconv.keras against
keras.layers, same weights and inputs, over MobileNetV1's shapes (3x3, "same").

    KERAS_BACKEND=torch python benchmarks/keras_separable.py [--repeats 50] [--batch 8]

Prints a markdown table: median milliseconds per training step (forward, then gradients with
respect to the input and every weight), spread (p90 - p10) / median, and Keras' time over
sepconv's. Same process, interleaved rounds (sepconv.timing.compare); outputs are checked to
agree first. The first call of each shape runs sepconv's "auto" tuner (untimed warm-up).
"""

import argparse
import os

# numpy's OpenBLAS threads compete with torch's for the cores; cap them before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import torch  # noqa: E402

import sepconv  # noqa: E402
from sepconv import timing  # noqa: E402
from sepconv.bench.model import cpu_name  # noqa: E402
from sepconv.keras import SeparableConv2D  # noqa: E402

# (H = W, input channels, filters): MobileNetV1's separable blocks at 224
SHAPES = [(112, 32, 64), (56, 128, 128), (28, 256, 256), (14, 512, 512), (7, 1024, 1024)]


def training_step(layer, x, grad):
    """Forward, then the gradients of every input and weight (none accumulated)."""
    def step():
        y = layer(x)
        return torch.autograd.grad(y, [x, *(w.value for w in layer.trainable_weights)], grad)
    return step


def bench_shape(size, channels, filters, batch, repeats):
    ours, theirs = SeparableConv2D(filters, 3, padding="same"), keras.layers.SeparableConv2D(filters, 3, padding="same")
    x = torch.randn(batch, size, size, channels, requires_grad=True)
    theirs(x)
    ours(x)
    ours.set_weights(theirs.get_weights())
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)
    grad = torch.randn(batch, size, size, filters)
    candidates = [timing.Candidate("sepconv", training_step(ours, x, grad)),
                  timing.Candidate("keras", training_step(theirs, x, grad))]
    # no candidate is dropped: both are reported
    timing.compare(candidates, rounds=repeats, warmup=2, drop_factor=float("inf"), budget_s=float("inf"))
    return {c.name: c for c in candidates}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=50, help="timed rounds per shape (default %(default)s)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.repeats < 1:
        p.error(f"--repeats must be >= 1. Received: {a.repeats}.")
    torch.set_num_threads(a.threads)
    timing.steady_allocator()
    print(f"SeparableConv2D 3x3 'same', forward + backward, batch {a.batch}, float32, channels_last, "
          f"{a.threads} threads, {a.repeats} rounds. CPU: {cpu_name()}. torch {torch.__version__}, "
          f"keras {keras.__version__}, sepconv {sepconv.__version__}.\n")
    print("| input (HxWxC) | filters | sepconv ms | spread | keras ms | spread | keras / sepconv |")
    print("|---|---|---|---|---|---|---|")
    for size, channels, filters in SHAPES:
        r = bench_shape(size, channels, filters, a.batch, a.repeats)
        s, k = r["sepconv"], r["keras"]
        print(f"| {size}x{size}x{channels} | {filters} | {s.median * 1e3:.2f} | {s.spread:.0%} | "
              f"{k.median * 1e3:.2f} | {k.spread:.0%} | {k.median / s.median:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
