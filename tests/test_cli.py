import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sepconv import algorithms
from sepconv.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHAPE = "argument shape: must be N,C,H,W, four integers >= 1 like 1,32,112,112."


def run(argv, capsys):
    """(exit code, stdout, stderr) of `sepconv argv`, argparse's exits included."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,message", [
    (["explain", "1,-8,8,8"], f"{SHAPE} Received: 1,-8,8,8."),
    (["explain", "-1,8,8,8"], f"{SHAPE} Received: -1,8,8,8."),
    (["explain", "1,8,8"], "argument shape: must be N,C,H,W"),
    (["explain", "1,8,8,8", "--depth-multiplier", "0"],
     "argument --depth-multiplier: must be an integer >= 1. Received: 0."),
    (["explain", "1,8,8,8", "--depth-multiplier", "-2"],
     "argument --depth-multiplier: must be an integer >= 1. Received: -2."),
    (["explain", "1,8,8,8", "--padding", "-1"], "argument --padding: must be an integer >= 0. Received: -1."),
    (["--threads", "0", "cost", "list"], "argument --threads: must be an integer >= 1. Received: 0."),
    (["cost", "mobilenet_v1", "--input", "0"], "argument --input: must be an integer >= 1. Received: 0."),
    (["cost", "mobilenet_v1", "--input", "-5"], "argument --input: must be an integer >= 1. Received: -5."),
    (["cost", "--hand-count", "--input", "-100"], "argument --input: must be an integer >= 1. Received: -100."),
    (["cost", "mobilenet_v1", "--num-classes", "-1"], "argument --num-classes: must be an integer >= 1. Received: -1."),
    (["cost", "mobilenet_v1", "--num-classes", "0"], "argument --num-classes: must be an integer >= 1. Received: 0."),
    (["bench", "model", "--batch", "0"], "argument --batch: must be an integer >= 1. Received: 0."),
    (["bench", "model", "--batch", "1", "-1"], "argument --batch: must be an integer >= 1. Received: -1."),
    (["bench", "model", "--input", "0"], "argument --input: must be an integer >= 1. Received: 0."),
    (["bench", "layers", "--rounds", "0"], "argument --rounds: must be an integer >= 1. Received: 0."),
    (["demo", "--seeds", "0"], "argument --seeds: must be an integer >= 1. Received: 0."),
    (["train", "mobilenet_v1_small", "--alpha", "0"], "argument --alpha: must be a finite number > 0. Received: 0."),
    (["train", "mobilenet_v1_small", "--lr", "inf"], "argument --lr: must be a finite number > 0. Received: inf."),
    (["train", "mobilenet_v1_small", "--lr", "nan"], "argument --lr: must be a finite number > 0. Received: nan."),
    (["train", "mobilenet_v1_small", "--epochs", "0"], "argument --epochs: must be an integer >= 1. Received: 0."),
    (["train", "mobilenet_v1_small", "--timeout", "0"],
     "argument --timeout: must be a finite number > 0. Received: 0."),
])
def test_bad_numbers_are_one_line_naming_the_flag(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_out_of_memory_is_one_line(capsys):
    # the tuner refuses a shape it cannot time in this machine's memory, before allocating
    code, out, err = run(["explain", "1,10000000,8,10000000"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "explain: there is not enough memory for this request; use smaller sizes. Received: tuning a" in err
    # an allocation that fails (a 4.8 TB input) is one line too
    code, out, err = run(["cost", "mobilenet_v1", "--batch", "100000", "--input", "2000"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "cost: there is not enough memory for this request; use smaller sizes. Received: an allocation of" in err


def test_cost_of_an_input_too_small_for_the_model_is_one_line(capsys):
    code, _, err = run(["cost", "vgg16", "--input", "16"], capsys)   # five 2x2 poolings need 32
    assert code == 1 and err.count("\n") == 1
    assert "cost: vgg16 cannot run on an input this small; use a larger --input. Received: --input 16 (" in err


def test_threads_left_to_torch_unless_given(capsys):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert run(["cost", "list"], capsys)[0] == 0
        assert torch.get_num_threads() == 1
        assert run(["--threads", "2", "cost", "list"], capsys)[0] == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cost_roofline_folder_checked_before_counting(tmp_path, capsys, monkeypatch):
    import sepconv.analysis

    def counted(*a, **k):
        raise AssertionError("counted before the output was checked")

    monkeypatch.setattr(sepconv.analysis, "count", counted)
    (tmp_path / "file").write_text("")
    code, _, err = run(["cost", "mobilenet_v1", "--roofline", str(tmp_path / "file" / "x.png")], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "`--roofline` must be in a folder this process can write to." in err and "x.png" in err
    code, _, err = run(["cost", "mobilenet_v1", "--roofline", str(tmp_path)], capsys)
    assert code == 1 and "`--roofline` must be a file path, not a folder." in err


def test_cost_model_list_and_hint(capsys):
    code, _, err = run(["cost"], capsys)
    assert code == 1 and "`sepconv cost list` lists them" in err
    listed = run(["cost", "list"], capsys)[1]
    assert "mobilenet_v1" in listed.split() and run(["cost", "--list"], capsys)[1] == listed


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private, empty plan cache, forgotten by the tuner afterwards."""
    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(tmp_path))
    algorithms.tuner.clear()
    yield tmp_path
    algorithms.tuner.clear()


def test_tune_retimes_noisy_plans_or_all_with_retune(cache, capsys):
    keys = sorted(algorithms.explain(s, padding=1).key for s in [(1, 8, 8, 8), (1, 8, 10, 6)])
    data = json.loads((cache / "plans.json").read_text())
    (fingerprint,) = data
    data[fingerprint][keys[0]]["noisy"] = True
    data[fingerprint][keys[1]]["noisy"] = False   # (its own timing may have been noisy on a busy machine)
    (cache / "plans.json").write_text(json.dumps(data))
    algorithms.tuner.clear()

    code, out, _ = run(["tune"], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 1 and lines[0].startswith(f"{keys[0]}: ") and " -> " in lines[0]
    code, out, _ = run(["tune", "--retune"], capsys)
    assert code == 0 and [line.split(": ")[0] for line in out.splitlines()] == keys
    code, out, _ = run(["cache", "info"], capsys)
    assert code == 0 and f"{cache / 'plans.json'}: 2 for this machine" in out


def test_tune_with_nothing_stored(cache, capsys):
    assert run(["tune"], capsys)[1] == f"no noisy plans for this machine in {cache / 'plans.json'}\n"
    assert run(["tune", "--retune"], capsys)[1] == f"no stored plans for this machine in {cache / 'plans.json'}\n"


def test_cache_info_and_clear(cache, capsys):
    algorithms.explain((1, 8, 8, 8), padding=1)
    (cache / "peaks.json").write_text("{}")
    code, out, _ = run(["cache", "info"], capsys)
    assert code == 0 and "1 for this machine, " in out and f"{cache / 'peaks.json'}: present" in out
    code, out, _ = run(["cache", "clear"], capsys)
    assert code == 0 and out.splitlines() == [f"deleted {cache / 'plans.json'}", f"deleted {cache / 'peaks.json'}"]
    assert not (cache / "plans.json").exists() and not (cache / "peaks.json").exists()
    assert algorithms.tuner.stored_plans() == {}
    assert run(["cache", "clear"], capsys)[1] == f"nothing to delete in {cache}\n"


@pytest.mark.parametrize("script", ["bench_depthwise.py", "bench_winograd_dense.py"])
def test_benchmark_scripts_do_not_write_docs_by_default(script):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "(default out/bench)" in done.stdout
