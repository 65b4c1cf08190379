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


def cmd_train(args) -> int:
    from .data import digits, image_folder, synthetic
    from .models import create_model
    from .train import save_checkpoint, train

    if args.data == "digits":
        train_set, test_set = digits(args.size)
    elif args.data == "synthetic":
        train_set, test_set = synthetic(512, args.size)
    else:
        train_set, test_set = image_folder(args.data, args.size, grayscale=True)
    kwargs = {"alpha": args.alpha} if args.alpha else {}
    in_channels = train_set[0][0].shape[0]
    classes = int(max(int(y) for _, y in train_set)) + 1
    model = create_model(args.model, in_channels=in_channels, num_classes=classes, **kwargs)
    result = train(model, train_set, test_set, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed, checkpoint_dir=args.checkpoint_dir, resume=not args.no_resume,
                   progress=not args.json)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if args.save and rank == 0:
        save_checkpoint(args.save, model.state_dict())
    if rank == 0:
        if args.json:
            print(json.dumps({"test_accuracy": result.test_accuracy, "history": result.history,
                              "seconds": result.seconds, "resumed_from_epoch": result.resumed_from_epoch}))
        else:
            print(f"test accuracy {result.test_accuracy * 100:.2f}% after {args.epochs} epochs "
                  f"({result.seconds:.1f} s)")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_cost(args) -> int:
    from rich.console import Console

    from .analysis import count, mobilenet_table2, mobilenet_hand_count

    console = Console()
    if args.hand_count:
        t = mobilenet_hand_count(args.input)
        if args.json:
            print(json.dumps(t, indent=1))
            return 0
        print(f"MobileNetV1 body, 14 layers, input {args.input}, out = round((size - 2) / stride)")
        print(f"{'layer':>5} {'in':>4} {'out':>4} {'C_in':>5} {'C_out':>5} {'s':>2} {'standard MACs':>15} {'separable MACs':>15}")
        for r in t["rows"]:
            print(f"{r['layer']:>5} {r['in']:>4} {r['out']:>4} {r['c_in']:>5} {r['c_out']:>5} {r['stride']:>2} "
                  f"{r['standard_macs']:>15,} {r['separable_macs']:>15,}")
        print(f"total{'':>29}{t['standard_macs']:>15,} {t['separable_macs']:>15,}   ratio {t['ratio']:.4f}")
        if any(r["out"] <= 0 for r in t["rows"]):
            print("note: the classic formula treats every 3x3 convolution as unpadded, so late layers get "
                  "sizes <= 0 whose squares still count; `sepconv cost mobilenet_v1 --input N` counts the real "
                  "(padded) network.")
        return 0
    if not args.model:
        raise ValueError("cost: give a model id (see `sepconv cost --list`) or --hand-count.")
    from .models import create_model, list_models

    if args.model == "list":
        print("\n".join(list_models()))
        return 0
    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    model = create_model(args.model, **kwargs).eval()
    from .models.registry import input_channels

    in_channels = input_channels(model)
    x = torch.randn(args.batch, in_channels, args.input, args.input)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    models = {"as built": model}
    if args.compare == "standard":
        from .convert import to_standard

        models["standard"] = to_standard(model).eval()
    out = {label: count(m, x) for label, m in models.items()}
    report = out["as built"]
    rows = None
    if args.measure or args.roofline:  # only the model as built is timed and plotted
        from .analysis.roofline import machine_peaks, measure_layers, plot_roofline, roofline

        if args.measure:
            measure_layers(model, (x,), report)
        peaks = machine_peaks()
        rows = roofline(report, peaks)
        if args.roofline:
            plot_roofline(rows, peaks, args.roofline, f"{args.model} @ {args.input}: roofline")
    if args.json:
        print(json.dumps({k: json.loads(r.to_json()) for k, r in out.items()}, indent=1))
        return 0
    if args.csv:
        print(out["as built"].to_csv(), end="")
        return 0
    if args.layers:
        console.print(report.table())
    t = report.total
    print(f"{args.model} @ {args.input}x{args.input}, batch {args.batch}: {t.params:,} parameters, "
          f"{t.macs:,} MACs ({t.macs / 1e6:.1f}M; {t.flops / 1e9:.3f} GFLOPs = 2 x MACs), "
          f"{t.bytes / 1e6:.1f} MB moved, {t.intensity:.2f} FLOP/byte")
    if report.unsupported:
        print("ops without a cost formula (counted as 0 MACs): "
              + ", ".join(f"{k} x{v}" for k, v in report.unsupported.items()))
    print("by layer kind (MobileNet Table 2):")
    for kind, row in mobilenet_table2(report).items():
        print(f"  {kind:<22} {row['mac_share'] * 100:6.2f}% of MACs  {row['param_share'] * 100:6.2f}% of parameters")
    if "standard" in out:
        s = out["standard"].total
        print(f"with standard convolutions: {s.params:,} parameters, {s.macs:,} MACs; "
              f"separable/standard = {t.macs / s.macs:.4f} MACs, {t.params / s.params:.4f} parameters")
    if args.measure:
        print(f"{'layer':<28}{'bound':>8}{'FLOP/B':>8}{'bound ms':>10}{'measured ms':>13}{'of bound':>9}")
        for r in rows:
            print(f"{r['layer']:<28}{r['bound']:>8}{r['intensity']:>8.2f}{r['lower_bound_ms']:>10.4f}"
                  f"{r.get('measured_ms', float('nan')):>13.4f}{r.get('fraction_of_bound', float('nan')):>9.2f}")
    if args.roofline:
        print(f"wrote {args.roofline}")
    return 0


def cmd_bench(args) -> int:
    from .bench import layers

    rounds = {} if args.rounds is None else {"rounds": args.rounds}
    if args.target == "model":
        from .bench import model as model_bench

        rows = model_bench.bench_model(args.model, batches=args.batch, size=args.input,
                                       progress=(lambda s: None) if args.json else print, **rounds)
        model_bench.write(rows, args.out)
        if args.json:
            print(json.dumps(rows, indent=1))
        return 0
    rows = layers.bench_layers(batches=args.batch, training=args.training,
                               progress=(lambda s: None) if args.json else print, **rounds)
    summary = layers.write(rows, args.out)
    print(json.dumps(summary if not args.json else {"summary": summary, "rows": rows}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = _Parser(prog="sepconv", description="Efficient convolutions for PyTorch.")
    parser.add_argument("--version", action="version", version=f"sepconv {__version__}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="train standard, separable and versatile networks on digits and compare")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, default=1, help="seeds per network (accuracy is their mean)")
    p.add_argument("--size", type=int, default=16, help="digits are upsampled to size x size")
    p.add_argument("--alpha", type=float, default=0.5, help="width multiplier")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model from the zoo (torchrun for several processes)")
    p.add_argument("model", help="model id, e.g. mobilenet_v1_small")
    p.add_argument("--data", default="digits", help="'digits', 'synthetic' or an image folder path")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None, help="save last.pt here each epoch")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--save", default=None, help="write the final state_dict here (rank 0)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cost", help="parameters, MACs, bytes and roofline of a model")
    p.add_argument("model", nargs="?", help="model id, e.g. mobilenet_v1 ('list' lists them)")
    p.add_argument("--input", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compare", choices=["standard"], help="also cost the standard-conv form")
    p.add_argument("--hand-count", action="store_true", help="MobileNetV1 body hand calculation")
    p.add_argument("--layers", action="store_true", help="print the per-layer table")
    p.add_argument("--measure", action="store_true", help="time each layer beside its roofline bound")
    p.add_argument("--roofline", metavar="PNG", help="write a roofline plot")
    p.add_argument("--json", action="store_true")
    p.add_argument("--csv", action="store_true")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("bench", help="benchmark depthwise layers against PyTorch")
    p.add_argument("target", choices=["layers", "model"], help="depthwise layers, or a whole model")
    p.add_argument("model", nargs="?", default="mobilenet_v1_100", help="model id for `bench model`")
    p.add_argument("--input", type=int, default=224, help="input size for `bench model`")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=None,
                   help="timed calls per candidate (default: the benchmark's own)")
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
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
