"""The `sepconv` command. Each sub-command is a function taking parsed arguments; library
errors (ValueError/TypeError) become one line on stderr and exit code 1."""

from __future__ import annotations

import argparse
import json
import sys

import torch


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sepconv", description="Efficient convolutions for PyTorch.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="train and compare standard vs separable networks")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.set_defaults(func=cmd_demo)

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
