"""`sepconv bench model NAME`: one model against what users would run instead, each runtime in
a process of its own (sepconv.bench.worker) and in its default best configuration: PyTorch
eager (NCHW, channels_last), TorchScript (trace + freeze), torch.compile (inductor with
freezing), ONNX Runtime (default session options), OpenVINO (LATENCY hint at float32 and at
its default precision), and sepconv's optimize_for_inference in float32 and bfloat16.

All runtimes get the same input; every output is checked against eager float64. The passes
alternate runtimes, so slow drift of the machine hits all alike; each runtime's calls are
timed one by one and reported as the median with the 10th-90th percentile spread, the ratio
to the fastest peer of the same precision, GFLOP/s and the fraction of this machine's
measured float32 GEMM peak.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from .. import kernels
from ..timing import percentile

RUNTIMES = ("torch_eager_nchw", "torch_eager_channels_last", "torchscript_freeze", "torch_compile", "onnxruntime",
            "openvino_f32", "openvino", "sepconv", "sepconv_bf16")
SEPCONV = ("sepconv", "sepconv_bf16")
ROUNDS = 60     # timed calls per runtime and batch, over all passes
PASSES = 3


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _prepare(name: str, batches, size: int, folder: Path):
    """Write the model, the inputs and one ONNX file per batch; return float64 references and
    the model's FLOPs per image."""
    from .. import algorithms
    from ..analysis import count
    from ..models import create_model
    from ..models.registry import input_channels

    torch.manual_seed(0)
    model = create_model(name).eval()
    for mod in model.modules():   # non-trivial BN statistics, so that folding is really tested
        if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    torch.save(model, folder / "model.pt")
    channels = input_channels(model)
    refs = {}
    for b in batches:
        x = torch.randn(b, channels, size, size)
        torch.save(x, folder / f"input_b{b}.pt")
        with torch.no_grad(), algorithms.forced("reference"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(folder / f"model_b{b}.onnx"), dynamo=False, input_names=["x"])
            refs[b] = model.double()(x.double())
            model.float()
    flops = count(model, torch.randn(1, channels, size, size)).total.flops
    return refs, flops


def precision_of(runtime: str, description: str) -> str:
    if runtime == "sepconv_bf16" or (runtime == "openvino" and ("bf16" in description.lower()
                                                                 or "bfloat16" in description.lower())):
        return "bf16"
    return "fp32"


# without bfloat16 hardware a bfloat16 run only converts to float32 and back: no measurement of bfloat16
NO_BF16 = "no bfloat16 hardware on this CPU (neither AVX512-BF16 nor AMX)"


def _run_worker(args, folder):
    cmd = [sys.executable, "-m", "sepconv.bench.worker", *map(str, args[:1]), str(folder), *map(str, args[1:])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=3600)


def profile_model(name="mobilenet_v1_100", batches=(1, 8), size=224, rounds=20, progress=print) -> dict:
    """Per-block profiles (sepconv.bench.profile), each runtime in its own process: sepconv
    float32 against ONNX Runtime, sepconv bfloat16 against OpenVINO at its default precision."""
    pairs = (("fp32", "profile_sepconv", "ONNX Runtime", "profile_onnxruntime"),
             ("bf16", "profile_sepconv_bf16", "OpenVINO", "profile_openvino"))
    profiles = []
    with tempfile.TemporaryDirectory(prefix="sepconv-profile-") as tmp:
        folder = Path(tmp)
        _prepare(name, batches, size, folder)
        for b in batches:
            for dt, ours, peer, theirs in pairs:
                if dt == "bf16" and not kernels.has_bf16_gemm():
                    progress(f"  profile batch {b} bf16: skipped ({NO_BF16})")
                    continue
                got = {}
                for rt in (ours, theirs):
                    done = _run_worker([rt, b, rounds], folder)
                    if done.returncode != 0:
                        raise RuntimeError(f"profile {rt} batch {b}: " + (done.stderr.strip().splitlines() or ["failed"])[-1])
                    got[rt] = torch.load(folder / f"{rt}_b{b}.pt", weights_only=False)
                profiles.append({"batch": b, "dtype": dt, "sepconv": got[ours], "peer": peer, "theirs": got[theirs]})
                progress(f"  profile batch {b} {dt}: sepconv {sum(v['ms'] for v in got[ours].values()):.3f} ms, "
                         f"{peer} {sum(v['ms'] for v in got[theirs].values()):.3f} ms (sums of per-node medians)")
    return {"model": name, "size": size, "cpu": cpu_name(), "threads": torch.get_num_threads(), "profiles": profiles}


def bench_model(name="mobilenet_v1_100", batches=(1, 8), size=224, rounds=ROUNDS, runtimes=RUNTIMES,
                passes=PASSES, progress=print) -> dict:
    """Benchmark `name`; returns the table as a dict (see :func:`write`)."""
    from ..analysis.roofline import machine_peaks

    peaks = machine_peaks()
    samples: dict = {}
    info: dict = {}
    with tempfile.TemporaryDirectory(prefix="sepconv-bench-") as tmp:
        folder = Path(tmp)
        refs, flops = _prepare(name, batches, size, folder)
        per_pass = max(1, rounds // passes)
        if "sepconv_bf16" in runtimes and not kernels.has_bf16_gemm():
            info.update({("sepconv_bf16", b): {"skipped": NO_BF16} for b in batches})
        for p in range(passes):
            for b in batches:
                for rt in runtimes:
                    if info.get((rt, b), {}).get("skipped"):
                        continue
                    done = _run_worker([rt, b, per_pass], folder)
                    result = folder / f"{rt}_b{b}.pt"
                    if done.returncode != 0 or not result.exists():
                        reason = (done.stderr.strip().splitlines() or ["failed"])[-1][:200]
                        info[(rt, b)] = {"skipped": reason}
                        progress(f"  batch {b} {rt}: skipped ({reason})")
                        continue
                    r = torch.load(result, weights_only=True)
                    samples.setdefault((rt, b), []).extend(r["times"])
                    want = refs[b]
                    diff = (r["output"].double() - want).abs().max() / want.abs().max()
                    report = folder / f"{rt}_b{b}_report.txt"
                    info[(rt, b)] = {"description": r["description"], "build_s": r["build_s"], "threads": r["threads"],
                                     "rel_diff_vs_float64": diff.item(),
                                     "top1_agreement": (r["output"].argmax(1) == want.argmax(1)).float().mean().item(),
                                     **({"report": report.read_text()} if report.exists() else {})}
                    med = sorted(r["times"])[len(r["times"]) // 2]
                    progress(f"  pass {p + 1} batch {b} {rt:<26} {med * 1e3:9.3f} ms")
    rows = []
    for b in batches:
        for rt in runtimes:
            meta = info.get((rt, b), {})
            if "skipped" in meta:
                rows.append({"batch": b, "runtime": rt, "skipped": meta["skipped"]})
                continue
            t = samples[(rt, b)]
            median = percentile(t, 50)
            rows.append({"batch": b, "runtime": rt, "precision": precision_of(rt, meta["description"]),
                         "median_ms": median * 1e3, "p10_ms": percentile(t, 10) * 1e3,
                         "p90_ms": percentile(t, 90) * 1e3, "samples": len(t),
                         "gflops": flops * b / median / 1e9,
                         "fraction_of_fp32_gemm_peak": flops * b / median / 1e9 / peaks["gemm_gflops"], **meta})
        for prec in ("fp32", "bf16"):
            peers = [r for r in rows if r["batch"] == b and r.get("precision") == prec and r["runtime"] not in SEPCONV]
            best = min((r["median_ms"] for r in peers), default=None)
            for r in rows:
                if r["batch"] == b and r.get("precision") == prec and best is not None:
                    r["vs_fastest_peer"] = r["median_ms"] / best
    return {"model": name, "size": size, "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "peaks": peaks, "flops_per_image": flops, "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"{result['model']}, {result['size']}x{result['size']}, {result['cpu']}, {result['threads']} threads; "
             f"float32 GEMM peak {result['peaks']['gemm_gflops']:.0f} GFLOP/s; "
             f"{result['flops_per_image'] / 1e9:.3f} GFLOP per image (2 x MACs)", "",
             "| batch | runtime | precision | median ms (p10-p90) | vs fastest peer, same precision | GFLOP/s "
             "| of fp32 peak | max diff / max logit vs float64 | top-1 agreement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['batch']} | {r['runtime']} | - | skipped: {r['skipped']} | | | | | |")
            continue
        ratio = f"{r['vs_fastest_peer']:.2f}x" if "vs_fastest_peer" in r else "-"
        lines.append(f"| {r['batch']} | {r['runtime']} | {r['precision']} | {r['median_ms']:.3f} "
                     f"({r['p10_ms']:.3f}-{r['p90_ms']:.3f}) | {ratio} | {r['gflops']:.1f} | "
                     f"{r['fraction_of_fp32_gemm_peak']:.2f} | {r['rel_diff_vs_float64']:.1e} | {r['top1_agreement']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    """One panel per batch, bars on a linear axis with the p10-p90 spread, bf16 hatched."""
    from .._optional import pyplot

    plt = pyplot()
    batches = sorted({r["batch"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    for ax, b in zip(axes[0], batches):
        rows = [r for r in result["rows"] if r["batch"] == b and "skipped" not in r]
        names = [r["runtime"] for r in rows]
        med = [r["median_ms"] for r in rows]
        err = [[m - r["p10_ms"] for m, r in zip(med, rows)], [r["p90_ms"] - m for m, r in zip(med, rows)]]
        colors = ["black" if n in SEPCONV else "tab:gray" for n in names]
        bars = ax.bar(range(len(rows)), med, yerr=err, color=colors, capsize=3)
        for bar, r in zip(bars, rows):
            if r["precision"] == "bf16":
                bar.set_hatch("//")
                bar.set_facecolor("white")
                bar.set_edgecolor("black")
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{r['median_ms']:.1f}", ha="center",
                    va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)), names, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("median latency (ms), p10-p90")
        ax.set_title(f"batch {b}")
    fig.suptitle(f"{result['model']} {result['size']}x{result['size']}, {result['cpu']}, {result['threads']} threads "
                 "(hatched: bfloat16)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(result: dict, out_dir) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = result["model"]
    (out / f"model_{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"model_{name}.md").write_text(markdown(result))
    plot(result, out / f"model_{name}.png")
