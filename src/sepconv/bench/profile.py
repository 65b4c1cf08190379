"""`sepconv bench model NAME --profile`: sepconv's optimized model against its peers layer by
layer, each measured by its own instrument in a process of its own (sepconv.bench.worker):
the Program's per-step clock; in float32 ONNX Runtime's profiler (``enable_profiling``,
default session options otherwise), in bfloat16 OpenVINO's counters (``PERF_COUNT``, LATENCY
hint at its default precision). Both sides are summed per block of the model (the module path up
to its last numbered part: ``features.3``, ``blocks.2.1``, ``stages.1.blocks.2``), so that the
gap shows block by block whatever each runtime fused inside a block."""

from __future__ import annotations

import json
from pathlib import Path


def block_of(path: str) -> str:
    """The block a module path belongs to: up to its last numbered component that a named one
    follows (``features.3.depthwise`` -> ``features.3``, ``blocks.2.1.conv_pw`` ->
    ``blocks.2.1``, ``stages.1.blocks.2.conv_dw`` -> ``stages.1.blocks.2``), else up to its
    first numbered one (a Sequential stem: ``features.0.0`` and ``features.0.2`` ->
    ``features.0``), else its first component."""
    parts = path.split(".")
    numbered = [i for i, p in enumerate(parts) if p.isdigit()]
    named = [i for i in numbered if i + 1 < len(parts) and not parts[i + 1].isdigit()]
    end = named[-1] if named else numbered[0] if numbered else 0
    return ".".join(parts[: end + 1])


def onnx_module_path(node_name: str, modules=None) -> str:
    """The module path in a node name of torch.onnx.export: its scopes name each module by its
    qualified name within the nearest ancestor scope they extend ("/features/features.1/conv/
    conv.0/conv.0.0/Conv": "features.1" extends "features", "conv.0.0" extends "conv.0"), so
    the path joins the last scope of each such chain ("features.1.conv.0.0"); names without a
    scope (nodes the runtime added) give "". A runtime's fusion can append the fused node's op
    as one more scope (".../block.0.2/Mul/QuickGeluFusion/"): with `modules` (the model's module
    paths), the path is cut back to the longest one of them."""
    chain: list[str] = []
    for p in [p for p in node_name.split("/") if p][:-1]:
        if chain and p.startswith(chain[-1] + "."):
            chain[-1] = p
        else:
            chain.append(p)
    path = ".".join(chain)
    if modules is not None:
        while path and path not in modules:
            path = path.rpartition(".")[0]
    return path


def sepconv_profile(runner, flat_inputs, rounds: int) -> dict:
    """Per-step medians of a ProgramRunner, summed by block."""
    blocks: dict = {}
    for layer, op, seconds in runner.profile(flat_inputs, rounds):
        b = blocks.setdefault(block_of(layer), {"ms": 0.0, "ops": []})
        b["ms"] += seconds * 1e3
        b["ops"].append(op.split("::")[1])
    return blocks


def onnxruntime_profile(session_factory, feed, rounds: int, warmup: int, folder, modules=None) -> dict:
    """Per-node medians of ONNX Runtime's own profile over the last `rounds` runs, summed by
    block. session_factory(options) builds the session from default options with profiling on;
    the profile is written in `folder`; `modules` as for onnx_module_path."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(folder) / "onnxruntime_profile")
    sess = session_factory(options)
    for _ in range(warmup + rounds):
        sess.run(None, feed)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_node: dict = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_node.setdefault(e["name"][: -len("_kernel_time")], []).append((e["dur"], e["args"].get("op_name", "")))
    blocks: dict = {}
    for name, runs in per_node.items():
        last = sorted(d for d, _ in runs[-rounds:])
        path = onnx_module_path(name, modules)
        b = blocks.setdefault(block_of(path) if path else "(added by ONNX Runtime)", {"ms": 0.0, "ops": []})
        b["ms"] += last[len(last) // 2] / 1e3
        b["ops"].append(runs[-1][1])
    return blocks


def openvino_profile(compile_model, feed, rounds: int, warmup: int, modules=None) -> dict:
    """Per-node medians of OpenVINO's own counters (PERF_COUNT) over `rounds` runs, summed by
    block. compile_model(config) compiles with the runtime's config plus PERF_COUNT."""
    compiled = compile_model({"PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    per_node: dict = {}
    for i in range(warmup + rounds):
        request.infer(feed)
        if i >= warmup:
            for info in request.profiling_info:
                if info.status.name == "EXECUTED":
                    per_node.setdefault(info.node_name, []).append((info.real_time.total_seconds(), info.exec_type))
    blocks: dict = {}
    for name, runs in per_node.items():
        times = sorted(t for t, _ in runs)
        path = onnx_module_path(name, modules)
        b = blocks.setdefault(block_of(path) if path else "(added by OpenVINO)", {"ms": 0.0, "ops": []})
        b["ms"] += times[len(times) // 2] * 1e3
        b["ops"].append(runs[-1][1])
    return blocks


def markdown(name: str, batch: int, dtype: str, ours: dict, peer: str, theirs: dict, cpu: str) -> str:
    order = list(ours) + [b for b in theirs if b not in ours]
    lines = [f"{name}, batch {batch}, {dtype}, {cpu}: sepconv's Program (per-step clock) against {peer}'s own "
             "profiler (its default configuration, profiling on), medians per node summed per block", "",
             f"| block | sepconv ms | {peer} ms | ratio | sepconv ops | {peer} ops |", "|---|---|---|---|---|---|"]
    for b in order:
        o, t = ours.get(b, {"ms": 0.0, "ops": []}), theirs.get(b, {"ms": 0.0, "ops": []})
        ratio = f"{o['ms'] / t['ms']:.2f}" if t["ms"] > 0 and o["ms"] > 0 else "-"
        lines.append(f"| {b} | {o['ms']:.3f} | {t['ms']:.3f} | {ratio} | {_ops(o['ops'])} | {_ops(t['ops'])} |")
    so, st = sum(v["ms"] for v in ours.values()), sum(v["ms"] for v in theirs.values())
    lines.append(f"| **total** | **{so:.3f}** | **{st:.3f}** | **{so / st:.2f}** | | |")
    return "\n".join(lines) + "\n"


def _ops(ops) -> str:
    counts: dict = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(f"{op}" + (f" x{n}" if n > 1 else "") for op, n in counts.items())


def write(result: dict, out_dir) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = result["model"]
    (out / f"profile_{name}.json").write_text(json.dumps(result, indent=1))
    text = "\n".join(markdown(name, p["batch"], p["dtype"], p["sepconv"], p["peer"], p["theirs"], result["cpu"])
                     for p in result["profiles"])
    (out / f"profile_{name}.md").write_text(text)

