"""The `sepconv` command. Each sub-command is a function taking parsed arguments; bad flags,
library errors (ValueError/TypeError), a missing optional package (ImportError) and a failed
allocation become one line on stderr and exit code 1."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

# numpy's OpenBLAS thread pool competes with torch's OpenMP threads for the cores (measured on
# 2 cores: a 70 us depthwise call took 625 us); the command caps it before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

from ._validation import fail  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse takes "-1,8,8,8" for an unknown option (only "-1" looks like a number to
        # it) and then reports the shape as missing; read it as a value, to be refused as one.
        self._negative_number_matcher = re.compile(r"^-\d[\d,xX]*$|^-\d*\.\d+$")

    def error(self, message):  # one line and exit 1, no usage dump
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(1)


def _checked(convert, ok, expected: str):
    """An argparse `type`: converts a flag's text and checks it. argparse puts the flag's name
    before the message: "argument --batch: must be an integer >= 1. Received: 0."."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {expected}. Received: {text}.")
        return value
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "an integer >= 1")
_non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
_shape = _checked(lambda t: tuple(int(v) for v in t.lower().replace("x", ",").split(",")),
                  lambda v: len(v) == 4 and min(v) >= 1, "N,C,H,W, four integers >= 1 like 1,32,112,112")

# what torch's CPU allocators say when an allocation fails
_OUT_OF_MEMORY = ("can't allocate memory", "not enough memory")
# what convolutions and pooling say when their input is smaller than their window
_TOO_SMALL = ("Output size is too small", "can't be greater than actual input size")


def _writable(owner: str, flag: str, path, folder: bool = False) -> None:
    """Fail now, before the work, if `path` (a file, or with `folder` a folder, created if
    missing) cannot be written: finding out after minutes of work loses that work."""
    path = Path(path)
    if not folder and path.is_dir():
        fail(owner, f"`{flag}` must be a file path, not a folder.", f"{flag} {path}")
    try:
        (path if folder else path.parent).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path if folder else path.parent):
            pass
    except OSError as e:
        fail(owner, f"`{flag}` must be in a folder this process can write to.", f"{flag} {path} ({e.strerror or e})")


def cmd_explain(args) -> int:
    from .algorithms import explain

    plan = explain(args.shape, args.kernel_size, args.stride, args.padding, args.dilation,
                   args.depth_multiplier, getattr(torch, args.dtype), not args.nchw,
                   args.training, retune=args.retune)
    if args.json:
        print(json.dumps({"key": plan.key, "choice": plan.choice, "times_s": plan.times,
                          "rejected": plan.rejected, "mode": plan.mode, "threads": plan.threads}))
    else:
        print(plan)
    return 0


def _datasets(data: str, size: int):
    """(train, test) for `--data`: 'digits', 'synthetic' or an image folder."""
    from .data import digits, image_folder, synthetic

    if data == "digits":
        return digits(size)
    if data == "synthetic":
        return synthetic(512, size)
    return image_folder(data, size, grayscale=True)


def cmd_train(args) -> int:
    import torch.distributed as dist

    from ._files import remove_orphans
    from .models import create_model
    from .train import train

    if args.save:
        _writable("train", "--save", args.save)
        remove_orphans(args.save)
    if args.checkpoint_dir:
        _writable("train", "--checkpoint-dir", args.checkpoint_dir, folder=True)
    train_set, test_set = _datasets(args.data, args.size)
    kwargs = {} if args.alpha is None else {"alpha": args.alpha}
    in_channels = train_set[0][0].shape[0]
    classes = int(max(int(y) for _, y in train_set)) + 1
    # the initial weights are drawn here: seeding only inside train() would be too late
    torch.manual_seed(args.seed)
    model = create_model(args.model, in_channels=in_channels, num_classes=classes, **kwargs)
    data = args.data if args.data in ("digits", "synthetic") else str(Path(args.data).resolve())
    config = {"model": args.model, **kwargs, "in_channels": in_channels, "num_classes": classes, "data": data,
              "size": args.size}
    try:
        result = train(model, train_set, test_set, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       seed=args.seed, checkpoint_dir=args.checkpoint_dir, resume=not args.no_resume,
                       progress=not args.json, config=config, timeout=args.timeout)
    except dist.DistError as e:
        fail("train", "another process of the run stopped or did not answer within `--timeout`.",
             next(iter(str(e).splitlines()), type(e).__name__))
    rank = dist.get_rank() if dist.is_initialized() else 0
    if dist.is_initialized():
        dist.destroy_process_group()
    if rank != 0:
        return 0
    if args.json:
        print(json.dumps({"test_accuracy": result.test_accuracy, "history": result.history,
                          "seconds": result.seconds, "resumed_from_epoch": result.resumed_from_epoch}))
    else:
        print(f"test accuracy {result.test_accuracy * 100:.2f}% after {args.epochs} epochs "
              f"({result.seconds:.1f} s)")
    if args.save:
        _save_final(args.save, args.checkpoint_dir, model.state_dict())
    return 0


def _save_final(path, checkpoint_dir, state: dict) -> None:
    """Write the trained `state` to `path`; if that fails after all (the folder went away, the
    disk filled), write it to the checkpoint folder, the current folder or the temporary
    folder, whichever works first, and say where: a finished model is never thrown away."""
    from .train import save_checkpoint

    try:
        save_checkpoint(path, state)
        return
    except OSError as e:
        reason = e.strerror or str(e)
    name = f"rescued-{os.getpid()}-{Path(path).name}"
    for folder in (checkpoint_dir, os.getcwd(), tempfile.gettempdir()):
        if folder is None:
            continue
        try:
            save_checkpoint(Path(folder) / name, state)
        except OSError:
            continue
        fail("train", f"`--save` could not be written after training ({reason}); the trained model was written "
                      f"to {Path(folder) / name} instead.", f"--save {path}")
    fail("train", f"`--save` could not be written after training ({reason}), nor a copy in the checkpoint, "
                  "current or temporary folder.", f"--save {path}")


def _conversion_source(args):
    """(model, source, records, size) for `sepconv convert MODEL`: a zoo id (weights drawn with
    --seed), or a file read with weights_only=True: a converted model (--out of this command),
    a training checkpoint (--checkpoint-dir's last.pt, which records the zoo id and its
    arguments) or a bare state dict (train --save) with --arch naming the zoo id."""
    from .convert.converted import is_converted, rebuild
    from .models import create_model, list_models
    from .train import load_checkpoint

    if args.model in list_models() or not Path(args.model).exists():
        if args.model not in list_models() and (os.sep in args.model or args.model.endswith(".pt")):
            fail("convert", "`MODEL` must be a zoo id or an existing file.", f"{args.model} (no such file)")
        torch.manual_seed(args.seed)
        return create_model(args.model), {"model": args.model, "kwargs": {}}, [], None
    state = load_checkpoint(args.model)
    if is_converted(state):
        return rebuild(state, args.model), state["source"], list(state["layers"]), None
    if isinstance(state, dict) and isinstance(state.get("config"), dict) and "model" in state["config"]:
        config = state["config"]
        source = {"model": config["model"], "kwargs": {k: config[k] for k in ("alpha", "in_channels", "num_classes")
                                                       if config.get(k) is not None}}
        weights, size = state.get("model"), config.get("size")
    elif isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        if not args.arch:
            fail("convert", "a bare state dict (train --save) needs `--arch` naming its zoo model.", args.model)
        source, weights, size = {"model": args.arch, "kwargs": {}}, state, None
    else:
        fail("convert", "the file must be a converted model, a training checkpoint or a state dict.", args.model)
    model = create_model(source["model"], **source["kwargs"])
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        fail("convert", f"the weights do not fit {source['model']} built with {source['kwargs'] or 'its defaults'}.",
             f"{args.model} ({next(iter(str(e).splitlines()), '')})")
    return model, source, [], size


def cmd_convert(args) -> int:
    from .convert import decompose, finetune, to_separable, to_versatile
    from .convert.converted import layer_record, payload
    from .models.registry import input_channels
    from .train import evaluate, save_checkpoint

    if args.to != "decompose" and (args.rank is not None or args.energy is not None):
        fail("convert", "`--rank` and `--energy` are for `--to decompose`.", f"--to {args.to}")
    for flag, path in (("--out", args.out), ("--json", args.json)):
        if path:
            _writable("convert", flag, path)
    model, source, records, size = _conversion_source(args)
    model.eval()
    size = args.size or size or 224
    x = torch.randn(1, input_channels(model), size, size, generator=torch.Generator().manual_seed(args.seed))
    convert = {"separable": to_separable, "versatile": to_versatile,
               "decompose": lambda m, x: decompose(m, rank=args.rank, energy=args.energy, example_input=x)}[args.to]
    try:
        new, report = convert(model, x)
    except RuntimeError as e:
        if not any(s in str(e) for s in _TOO_SMALL):
            raise
        fail("convert", f"{source['model']} cannot run on an input this small; use a larger --size.", f"--size {size}")
    records = records + [layer_record(row["name"], new.get_submodule(row["name"])) for row in report.layers]
    print(report)
    result = report.to_dict()
    if args.finetune_epochs:
        train_set, test_set = _datasets(args.data, size)
        accuracy = {"original": evaluate(model, test_set), "converted": evaluate(new, test_set)}
        tuned = finetune(new, model, train_set, test_set, epochs=args.finetune_epochs, temperature=args.temperature,
                         seed=args.seed, progress=False)
        accuracy["finetuned"] = tuned.test_accuracy
        new.eval()
        result["accuracy"] = {**accuracy, "finetune_epochs": args.finetune_epochs, "data": args.data}
        print(f"test accuracy: original {accuracy['original'] * 100:.1f}%, converted {accuracy['converted'] * 100:.1f}%, "
              f"after {args.finetune_epochs} epoch(s) of distillation {accuracy['finetuned'] * 100:.1f}%")
    save_checkpoint(args.out, payload(new, source, records, result))
    print(f"wrote {args.out} (load with sepconv.convert.load_converted)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_cost(args) -> int:
    from .analysis import count, mobilenet_table2, mobilenet_hand_count

    if args.roofline:
        _writable("cost", "--roofline", args.roofline)
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
    from .models import create_model, list_models

    if args.list or args.model == "list":
        print("\n".join(list_models()))
        return 0
    if not args.model:
        fail("cost", "give a model id (`sepconv cost list` lists them) or --hand-count.", "no model")
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
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
    try:
        out = {label: count(m, x) for label, m in models.items()}
    except RuntimeError as e:
        if not any(s in str(e) for s in _TOO_SMALL):
            raise
        fail("cost", f"{args.model} cannot run on an input this small; use a larger --input.",
             f"--input {args.input} ({next(iter(str(e).splitlines()), '')})")
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
        from ._optional import require

        require("rich.console", "the per-layer table (--layers)").Console().print(report.table())
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

        progress = (lambda s: None) if args.json else print
        if args.profile:
            from .bench import profile

            result = model_bench.profile_model(args.model, batches=args.batch, size=args.input, progress=progress,
                                               **rounds)
            profile.write(result, args.out)
            print(json.dumps(result, indent=1) if args.json else
                  (Path(args.out) / f"profile_{args.model}.md").read_text())
            return 0
        runtimes = model_bench.RUNTIMES if not args.runtimes else tuple(args.runtimes)
        result = model_bench.bench_model(args.model, batches=args.batch, size=args.input, runtimes=runtimes,
                                         progress=progress, **rounds)
        model_bench.write(result, args.out)
        print(json.dumps(result, indent=1) if args.json else model_bench.markdown(result))
        return 0
    rows = layers.bench_layers(batches=args.batch, training=args.training,
                               progress=(lambda s: None) if args.json else print, **rounds)
    summary = layers.write(rows, args.out)
    print(json.dumps(summary if not args.json else {"summary": summary, "rows": rows}, indent=1))
    return 0


def cmd_tune(args) -> int:
    from .algorithms import tuner

    which = "stored" if args.retune else "noisy"
    plans = tuner.retune_stored(only_noisy=not args.retune, progress=print)
    if not plans:
        print(f"no {which} plans for this machine in {tuner.path}")
    return 0


def cmd_cache(args) -> int:
    from .algorithms import cache_dir, tuner

    folder = cache_dir()
    if folder is None:
        fail("cache", "there is no cache folder (no home directory); set SEPCONV_CACHE_DIR.", "no cache folder")
    peaks = folder / "peaks.json"
    if args.action == "info":
        plans = tuner.stored_plans()
        noisy = sum(p.noisy for p in plans.values())
        print(f"plans  {tuner.path}: {len(plans)} for this machine, {noisy} noisy (re-timed by `sepconv tune`)")
        print(f"peaks  {peaks}: {'present' if peaks.exists() else 'absent'}")
        return 0
    present = [p for p in (tuner.path, peaks) if p.exists()]
    tuner.clear(disk=True)
    if peaks.exists():
        peaks.unlink()
    print("\n".join(f"deleted {p}" for p in present) or f"nothing to delete in {folder}")
    return 0


def model_bench_runtimes() -> tuple:
    from .bench.model import RUNTIMES

    return RUNTIMES


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    from .train.loop import DEFAULT_TIMEOUT_S

    parser = _Parser(prog="sepconv", description="Efficient convolutions for PyTorch.")
    parser.add_argument("--version", action="version", version=f"sepconv {__version__}")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch threads (default: torch's own choice)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="train standard, separable and versatile networks on digits and compare")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--epochs", type=_positive_int, default=12)
    p.add_argument("--seeds", type=_positive_int, default=1, help="seeds per network (accuracy is their mean)")
    p.add_argument("--size", type=_positive_int, default=16, help="digits are upsampled to size x size")
    p.add_argument("--alpha", type=_positive_float, default=0.5, help="width multiplier")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model from the zoo (torchrun for several processes)")
    p.add_argument("model", help="model id, e.g. mobilenet_v1_small")
    p.add_argument("--data", default="digits", help="'digits', 'synthetic' or an image folder path")
    p.add_argument("--size", type=_positive_int, default=16)
    p.add_argument("--alpha", type=_positive_float, default=None, help="width multiplier (default: the model's)")
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--lr", type=_positive_float, default=0.05)
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--checkpoint-dir", default=None, help="save last.pt here each epoch and resume from it")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--save", default=None, help="write the final state_dict here (rank 0)")
    p.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                   help=f"how long a process waits for the others under torchrun (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("convert", help="replace a model's convolutions (separable, versatile, low rank), "
                                       "report per layer, optionally fine-tune by distillation, save")
    p.add_argument("model", help="zoo id, or a file: `convert --out`, a training checkpoint, or a state dict "
                                 "with --arch")
    p.add_argument("--to", required=True, choices=["separable", "versatile", "decompose"])
    p.add_argument("--rank", type=_positive_int, default=None, help="decompose: rank per layer")
    p.add_argument("--energy", type=_checked(float, lambda v: 0 < v <= 1, "a number in (0, 1]"), default=None,
                   help="decompose: fraction of each kernel's squared singular values kept")
    p.add_argument("--out", required=True, help="write the converted model here (load_converted reads it)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON here")
    p.add_argument("--arch", default=None, help="zoo id of a bare state dict MODEL")
    p.add_argument("--size", type=_positive_int, default=None,
                   help="input height and width (default: the checkpoint's, else 224)")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--finetune-epochs", type=_non_negative_int, default=0,
                   help="epochs of distillation from MODEL's outputs on --data (default 0: none)")
    p.add_argument("--temperature", type=_positive_float, default=4.0, help="distillation temperature")
    p.add_argument("--data", default="digits", help="fine-tuning data: 'digits', 'synthetic' or an image folder")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("cost", help="parameters, MACs, bytes and roofline of a model")
    p.add_argument("model", nargs="?", help="model id, e.g. mobilenet_v1 ('list' lists them)")
    p.add_argument("--list", action="store_true", help="list the model ids")
    p.add_argument("--input", type=_positive_int, default=224, help="input height and width (default 224)")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--num-classes", type=_positive_int, default=None)
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
    p.add_argument("--input", type=_positive_int, default=224, help="input size for `bench model`")
    p.add_argument("--batch", type=_positive_int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=_positive_int, default=None,
                   help="timed calls per candidate (default: the benchmark's own)")
    p.add_argument("--training", action="store_true", help="time forward+backward")
    p.add_argument("--runtimes", nargs="+", choices=model_bench_runtimes(), default=None,
                   help="`bench model`: the runtimes to run (default: all)")
    p.add_argument("--profile", action="store_true",
                   help="`bench model`: per-block times of sepconv against ONNX Runtime's own profiler")
    p.add_argument("--out", default="out/bench", help="folder for JSON, Markdown and PNG")
    p.add_argument("--json", action="store_true", help="print all rows as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("explain", help="time the depthwise algorithms for one shape and show the choice")
    p.add_argument("shape", type=_shape, help="input N,C,H,W, e.g. 1,32,112,112")
    p.add_argument("--kernel-size", type=_positive_int, default=3)
    p.add_argument("--stride", type=_positive_int, default=1)
    p.add_argument("--padding", type=_non_negative_int, default=1)
    p.add_argument("--dilation", type=_positive_int, default=1)
    p.add_argument("--depth-multiplier", type=_positive_int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32")
    p.add_argument("--nchw", action="store_true", help="time NCHW inputs (default channels_last)")
    p.add_argument("--training", action="store_true", help="time forward+backward")
    p.add_argument("--retune", action="store_true", help="ignore the cached plan")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("tune", help='time again the "auto" plans stored for this machine that were noisy')
    p.add_argument("--retune", action="store_true", help="time again every stored plan, not only the noisy ones")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("cache", help='the "auto" plan cache: where it is and what it holds, or delete it')
    p.add_argument("action", choices=["info", "clear"], help="info: path and plan counts; clear: delete "
                                                             "plans.json and peaks.json")
    p.set_defaults(func=cmd_cache)
    return parser


def _run(args) -> int:
    try:
        return args.func(args)
    except MemoryError as e:   # the tuner refuses a shape it cannot time in this machine's memory
        fail(args.command, "there is not enough memory for this request; use smaller sizes.", str(e))
    except RuntimeError as e:
        if not any(s in str(e) for s in _OUT_OF_MEMORY):
            raise
        asked = re.search(r"allocate (\d+) bytes", str(e))
        fail(args.command, "there is not enough memory for this request; use smaller sizes.",
             f"an allocation of {int(asked[1]) / 2**30:,.1f} GiB" if asked else next(iter(str(e).splitlines()), ""))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    except (ValueError, TypeError, ImportError) as e:
        sys.stderr.write(f"sepconv {args.command}: error: {e}\n")
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
