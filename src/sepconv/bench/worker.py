"""One runtime of `sepconv bench model`, in a process of its own: ``python -m
sepconv.bench.worker RUNTIME FOLDER BATCH ROUNDS``. It loads the model (or the ONNX file) and
the input the parent wrote in FOLDER, builds the runtime in its default best configuration,
warms it up, times ROUNDS calls one by one, and writes the times, the output and the build
time to FOLDER/<runtime>_b<batch>.pt. Nothing else runs in this process, so no runtime's
threads slow another down."""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch


def _onnx_output(fn):
    return lambda: torch.from_numpy(fn())


def build(runtime: str, folder: Path, batch: int):
    """(call, description) for `runtime`; call() returns the model's output tensor."""
    model = torch.load(folder / "model.pt", weights_only=False).eval()
    x = torch.load(folder / f"input_b{batch}.pt")
    onnx_path = str(folder / f"model_b{batch}.onnx")
    if runtime == "torch_eager_nchw":
        return (lambda: model(x)), "PyTorch eager, NCHW"
    if runtime == "torch_eager_channels_last":
        m = copy.deepcopy(model).to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        return (lambda: m(xc)), "PyTorch eager, channels_last"
    if runtime == "torchscript_freeze":
        from .. import algorithms

        with algorithms.forced("reference"):
            m = torch.jit.freeze(torch.jit.trace(model, x))
        return (lambda: m(x)), "torch.jit.trace + freeze"
    if runtime == "torch_compile":
        import torch._inductor.config as inductor

        inductor.freezing = True
        m = torch.compile(copy.deepcopy(model).to(memory_format=torch.channels_last))
        xc = x.contiguous(memory_format=torch.channels_last)
        return (lambda: m(xc)), "torch.compile, inductor with freezing, channels_last"
    if runtime == "onnxruntime":
        import onnxruntime as ort

        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])  # default session options
        feed = {sess.get_inputs()[0].name: x.numpy()}
        return _onnx_output(lambda: sess.run(None, feed)[0]), f"ONNX Runtime {ort.__version__}, default session options"
    if runtime in ("openvino", "openvino_f32"):
        import openvino as ov

        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if runtime == "openvino_f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        compiled = core.compile_model(onnx_path, "CPU", config)
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        request = compiled.create_infer_request()
        arr = x.numpy()
        out = compiled.output(0)
        return (_onnx_output(lambda: request.infer({0: arr})[out])), \
            f"OpenVINO {ov.__version__}, LATENCY hint, precision {precision}"
    if runtime in ("sepconv", "sepconv_bf16"):
        from ..convert import optimize_for_inference

        dtype = torch.bfloat16 if runtime == "sepconv_bf16" else torch.float32
        m = optimize_for_inference(model, x, dtype)
        (folder / f"{runtime}_b{batch}_report.txt").write_text(str(m.report))
        return (lambda: m(x)), f"sepconv optimize_for_inference, {str(dtype).replace('torch.', '')}"
    raise ValueError(f"bench worker: unknown runtime {runtime!r}")


PROFILES = ("profile_sepconv", "profile_sepconv_bf16", "profile_onnxruntime", "profile_openvino")


def profile(runtime: str, folder: Path, batch: int, rounds: int) -> dict:
    """Per-block times of sepconv (its Program's clock) or ONNX Runtime (its profiler)."""
    from . import profile as prof

    x = torch.load(folder / f"input_b{batch}.pt")
    model = torch.load(folder / "model.pt", weights_only=False).eval()
    modules = {name for name, _ in model.named_modules() if name}
    if runtime == "profile_onnxruntime":
        import onnxruntime as ort

        path = str(folder / f"model_b{batch}.onnx")
        factory = lambda options: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return prof.onnxruntime_profile(factory, {"x": x.numpy()}, rounds, warmup=10, folder=folder, modules=modules)
    if runtime == "profile_openvino":
        import openvino as ov

        path = str(folder / f"model_b{batch}.onnx")
        compile_model = lambda extra: ov.Core().compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY", **extra})
        return prof.openvino_profile(compile_model, {0: x.numpy()}, rounds, warmup=10, modules=modules)
    from ..convert import optimize_for_inference
    from ..convert.program import flat_inputs

    dtype = torch.bfloat16 if runtime.endswith("bf16") else torch.float32
    m = optimize_for_inference(model, x, dtype)
    with torch.inference_mode():
        for _ in range(10):
            m(x)
        (runner,) = m._programs.values()
        (name,) = m.plans
        cx = x.to(dtype).contiguous(memory_format=torch.channels_last)
        return prof.sepconv_profile(runner, flat_inputs(m.plans[name], (cx,), {}), rounds)


def main(argv) -> int:
    runtime, folder, batch, rounds = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    if runtime in PROFILES:
        torch.save(profile(runtime, folder, batch, rounds), folder / f"{runtime}_b{batch}.pt")
        return 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        call, description = build(runtime, folder, batch)
        build_s = time.perf_counter() - t0
        # warm-up: at least 5 calls and 1 s (compilers, first-call allocations, thread pools)
        start = time.perf_counter()
        n = 0
        while n < 5 or time.perf_counter() - start < 1.0:
            out = call()
            n += 1
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    torch.save({"times": times, "output": out.detach().float().clone(), "build_s": build_s,
                "description": description, "threads": torch.get_num_threads()},
               folder / f"{runtime}_b{batch}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
