"""Conversions: how much of the original accuracy fine-tuning by distillation recovers, on
scikit-learn's digits (1,797 8x8 images, embedded; upsampled to 16x16).

A small plain CNN (3x3 convolutions with BN and ReLU, as third-party code writes it) is
trained, converted with each of to_separable, decompose and to_versatile, evaluated, then
fine-tuned for a few epochs by distillation from the original's logits and evaluated again.
Writes a markdown table to stdout (and to --out if given).

    PYTHONPATH=src python benchmarks/convert_recovery.py --out docs/results/convert_recovery.md
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch import nn

from sepconv import algorithms
from sepconv.convert import decompose, finetune, to_separable, to_versatile
from sepconv.data import digits
from sepconv.train import evaluate, train


def small_cnn(classes: int = 10) -> nn.Module:
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*block(1, 32, 1), *block(32, 64, 2), *block(64, 64, 1), *block(64, 128, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))


def main(argv=None) -> str:
    # Depthwise steps run PyTorch's F.conv2d ("reference"): "auto" would time the algorithms
    # for every new shape first, minutes on a busy 2-core machine, and accuracy is the same.
    with algorithms.forced("reference"):
        return _run(argv)


def _run(argv) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the original")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="decompose ranks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    train_set, test_set = digits(16)
    torch.manual_seed(args.seed)
    original = small_cnn()
    t0 = time.perf_counter()
    train(original, train_set, test_set, epochs=args.epochs, seed=args.seed, progress=False)
    original.eval()
    base = evaluate(original, test_set)
    x = test_set[:1][0]
    conversions = {"to_separable": lambda m: to_separable(m, x),
                   **{f"decompose(rank={r})": lambda m, r=r: decompose(m, rank=r, example_input=x) for r in args.ranks},
                   "to_versatile": lambda m: to_versatile(m, x)}
    rows = []
    for name, convert in conversions.items():
        student, report = convert(copy.deepcopy(original))
        before = evaluate(student, test_set)
        tuned = finetune(student, original, train_set, test_set, epochs=args.finetune_epochs, seed=args.seed)
        rows.append((name, len(report.layers), report.params_before, report.params_after, report.macs_before,
                     report.macs_after, before, tuned.test_accuracy))
    lines = [f"`PYTHONPATH=src python benchmarks/convert_recovery.py` (defaults). Small CNN (4 3x3 conv+BN+ReLU, 32-64-64-128 channels) on digits 16x16, {args.epochs} epochs, "
             f"seed {args.seed}; fine-tune: {args.finetune_epochs} epochs of distillation (KL at T=4) from the "
             f"original's logits, lr 0.01. Original test accuracy **{base * 100:.1f}%** "
             f"(360 test images). Total {time.perf_counter() - t0:.0f} s on 2 threads.", "",
             "| conversion | convs replaced | parameters | MACs | accuracy after conversion | after fine-tune | "
             "recovered |", "|---|---|---|---|---|---|---|"]
    for name, n, pb, pa, mb, ma, before, after in rows:
        recovered = f"{(after - before) / (base - before) * 100:.0f}% of the loss" if base > before else "nothing lost"
        lines.append(f"| {name} | {n} | {pb:,} -> {pa:,} | {mb / 1e6:.2f}M -> {ma / 1e6:.2f}M | {before * 100:.1f}% | "
                     f"{after * 100:.1f}% | {recovered} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
