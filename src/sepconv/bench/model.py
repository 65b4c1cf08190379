"""`sepconv bench model`: one model, one input, one process: PyTorch eager (NCHW and
channels_last), TorchScript (trace + freeze), torch.compile, ONNX Runtime, OpenVINO (fp32
precision set explicitly) and sepconv's optimize_for_inference in float32 and in bfloat16;
outputs compared with eager NCHW (max abs and relative difference, top-1 agreement);
interleaved medians."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import torch

from ..timing import Candidate, compare


def _onnx_file(model, x, folder) -> str:
    path = str(Path(folder) / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["y"])
    return path


def runners(model, x, include=None, threads=None):
    """name -> (build() -> callable) for every peer; builders may raise if unavailable."""
    threads = threads or torch.get_num_threads()
    folder = tempfile.mkdtemp(prefix="sepconv-bench-")
    from .. import algorithms
    from ..convert import optimize_for_inference

    def eager_nchw():
        return lambda: model(x)

    def eager_cl():
        m = __import__("copy").deepcopy(model).to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        return lambda: m(xc)

    def torchscript():
        with algorithms.forced("reference"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = torch.jit.freeze(torch.jit.trace(model, x))
        return lambda: m(x)

    def compiled():
        m = torch.compile(__import__("copy").deepcopy(model).to(memory_format=torch.channels_last))
        xc = x.contiguous(memory_format=torch.channels_last)
        m(xc)
        return lambda: m(xc)

    def onnxruntime():
        import onnxruntime as ort

        with algorithms.forced("reference"):
            path = _onnx_file(model, x, folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # ORT's idle workers spin after each run; in one process they take the cores from
        # whichever peer runs next (measured: eager 13.6 -> 26.5 ms beside a spinning ORT).
        # ORT itself measured 8.1-10.4 ms without spinning against 10.7-13.0 ms with it in the
        # same benchmark.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {"x": x.numpy()}
        return lambda: torch.from_numpy(sess.run(None, feed)[0])

    def openvino():
        import openvino as ov

        with algorithms.forced("reference"):
            path = _onnx_file(model, x, folder)
        core = ov.Core()
        cfg = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
               "PERFORMANCE_HINT": "LATENCY"}
        compiled_model = core.compile_model(path, "CPU", cfg)
        request = compiled_model.create_infer_request()
        arr = x.numpy()
        return lambda: torch.from_numpy(request.infer({0: arr})[compiled_model.output(0)].copy())

    def sepconv_optimized():
        m = optimize_for_inference(model, x)
        return lambda: m(x)

    def sepconv_bf16():
        m = optimize_for_inference(model, x, dtype=torch.bfloat16)
        return lambda: m(x)

    table = {"torch_eager_nchw": eager_nchw, "torch_eager_channels_last": eager_cl,
             "torchscript_freeze": torchscript, "torch_compile": compiled,
             "onnxruntime": onnxruntime, "openvino": openvino, "sepconv": sepconv_optimized,
             "sepconv_bf16": sepconv_bf16}
    return {k: v for k, v in table.items() if include is None or k in include}


def bench_model(name="mobilenet_v1_100", batches=(1, 8), size=224, rounds=30, include=None,
                progress=print) -> list[dict]:
    from ..models import create_model
    from ..models.registry import input_channels
    from ..timing import steady_allocator

    steady_allocator()
    rows = []
    for batch in batches:
        torch.manual_seed(0)
        model = create_model(name).eval()
        for mod in model.modules():  # non-trivial BN statistics, so folding is really tested
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        in_channels = input_channels(model)
        x = torch.randn(batch, in_channels, size, size)
        with torch.no_grad():
            want = model(x)
            cands, checks, skipped = [], {}, {}
            for peer, build in runners(model, x, include).items():
                try:
                    fn = build()
                    got = fn()
                except Exception as e:  # a peer missing on this machine is reported, not fatal
                    skipped[peer] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                    progress(f"  {peer}: skipped ({skipped[peer]})")
                    continue
                diff = (got.float() - want).abs()
                checks[peer] = {"max_abs_diff_vs_eager": diff.max().item(),
                                "max_rel_diff_vs_eager": (diff.max() / want.abs().max()).item(),
                                "top1_agreement": (got.argmax(1) == want.argmax(1)).float().mean().item()}
                cands.append(Candidate(peer, fn))
            compare(cands, rounds=rounds, budget_s=60)
        base = next(c.median for c in cands if c.name == "torch_eager_nchw")
        row = {"model": name, "batch": batch, "size": size, "threads": torch.get_num_threads(),
               "skipped": skipped,
               "results": {c.name: {"median_ms": c.median * 1e3, "speedup_vs_eager_nchw": base / c.median,
                                    **checks[c.name]} for c in cands}}
        rows.append(row)
        for c in cands:
            r = row["results"][c.name]
            progress(f"batch {batch} {c.name:<26} {r['median_ms']:9.3f} ms  x{r['speedup_vs_eager_nchw']:.2f}"
                     f"  max|diff| {r['max_abs_diff_vs_eager']:.2e}")
    return rows


def write(rows, out_dir) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = rows[0]["model"]
    (out / f"model_{name}.json").write_text(json.dumps(rows, indent=1))
    lines = ["| batch | runtime | median ms | speedup vs eager NCHW | max abs diff | max diff / max abs logit"
             " | top-1 agreement |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for peer, res in r["results"].items():
            lines.append(f"| {r['batch']} | {peer} | {res['median_ms']:.3f} | {res['speedup_vs_eager_nchw']:.2f} | "
                         f"{res['max_abs_diff_vs_eager']:.1e} | {res['max_rel_diff_vs_eager']:.1e} | "
                         f"{res['top1_agreement']:.2f} |")
    (out / f"model_{name}.md").write_text("\n".join(lines) + "\n")
    from .._optional import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 4))
    peers = list(rows[0]["results"])
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar([k + i * width for k in range(len(peers))],
               [r["results"].get(p, {}).get("median_ms", 0) for p in peers], width, label=f"batch {r['batch']}")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(peers))], peers, rotation=30, fontsize=8, ha="right")
    ax.set_ylabel("median latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{name}, {rows[0]['size']}x{rows[0]['size']}, {rows[0]['threads']} threads, fp32 (sepconv_bf16: bf16)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"model_{name}.png", dpi=120)
    plt.close(fig)
