"""The `sepconv` command. Each sub-command is a function taking parsed arguments; library
errors (ValueError/TypeError) become one line on stderr and exit code 1."""

from __future__ import annotations

import argparse
import json
import os
import sys

# numpy's OpenBLAS thread pool competes with torch's OpenMP threads for the cores (measured on
# 2 cores: a 70 us depthwise call took 625 us); the command caps it before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 1, no usage dump
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(1)


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W like 1,32,112,112; got {text!r}")


def cmd_explain(args) -> int:
    from .algorithms import explain

    if len(args.shape) != 4:
        raise ValueError(f"explain: `shape` must be N,C,H,W. Received: {args.shape}.")
    plan = explain(args.shape, args.kernel_size, args.stride, args.padding, args.dilation,
                   args.depth_multiplier, getattr(torch, args.dtype), not args.nchw,
                   args.training, retune=args.retune)
    if args.json:
        print(json.dumps({"key": plan.key, "choice": plan.choice, "times_s": plan.times,
                          "rejected": plan.rejected, "mode": plan.mode, "threads": plan.threads}))
    else:
        print(plan)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_bench(args) -> int:
    from .bench import layers

    if args.target != "layers":
        raise ValueError(f"bench: unknown target {args.target!r}; expected 'layers'.")
    rows = layers.bench_layers(batches=args.batch, rounds=args.rounds, training=args.training,
                               progress=(lambda s: None) if args.json else print)
    summary = layers.write(rows, args.out)
    print(json.dumps(summary if not args.json else {"summary": summary, "rows": rows}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sepconv", description="Efficient convolutions for PyTorch.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="train and compare standard vs separable networks")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="benchmark depthwise layers against PyTorch")
    p.add_argument("target", choices=["layers"], help="what to benchmark")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--training", action="store_true", help="time forward+backward")
    p.add_argument("--out", default="out/bench", help="folder for JSON, Markdown and PNG")
    p.add_argument("--json", action="store_true", help="print all rows as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("explain", help="time the depthwise algorithms for one shape and show the choice")
    p.add_argument("shape", type=_shape, help="input N,C,H,W, e.g. 1,32,112,112")
    p.add_argument("--kernel-size", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--padding", type=int, default=1)
    p.add_argument("--dilation", type=int, default=1)
    p.add_argument("--depth-multiplier", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32")
    p.add_argument("--nchw", action="store_true", help="time NCHW inputs (default channels_last)")
    p.add_argument("--training", action="store_true", help="time forward+backward")
    p.add_argument("--retune", action="store_true", help="ignore the cached plan")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_explain)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ValueError, TypeError) as e:
        sys.stderr.write(f"sepconv {args.command}: error: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
