"""Depthwise 3x3 over MobileNetV1's shapes: PyTorch NCHW and channels_last against every
sepconv algorithm and "auto", forward (inference) and forward+backward (training).

    python benchmarks/bench_depthwise.py [--out DIR] [--rounds 60] [--training]

Writes depthwise_<mode>.{json,md,png} into DIR (default out/bench; `--out docs/results`
replaces the committed results). Same process, same inputs, interleaved rounds, medians, 2
threads, channels_last activations; every output is checked against float64.
"""

import argparse
import os

# numpy's OpenBLAS thread pool competes with torch's OpenMP threads for the 2 cores (measured:
# a 70 us depthwise call took 625 us with it); it must be capped before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

from sepconv.bench import layers  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/bench", help="output folder (default %(default)s)")
    p.add_argument("--rounds", type=int, default=layers.LAYER_ROUNDS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--training", action="store_true")
    p.add_argument("--batches", default="1,8")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = layers.bench_layers(batches=[int(b) for b in a.batches.split(",")], rounds=a.rounds,
                               training=a.training)
    print(layers.write(rows, a.out))
