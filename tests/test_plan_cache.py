"""The "auto" plan cache never lies and never breaks a call: malformed files, no home
directory, an empty or read-only cache folder, concurrent writers."""

import importlib
import json
import os
import subprocess
import sys
import warnings

import pytest

import sepconv
from sepconv import algorithms

tuner_module = importlib.import_module("sepconv.algorithms.tuner")   # (the package's `tuner` is the instance)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuner_module, "_warned", set())
    algorithms.tuner.clear()
    yield tmp_path
    algorithms.tuner.clear()


@pytest.mark.parametrize("content", ["[]", "null", "{\"x\": 3}", "not json", '{"fp": {"k": {"choice": "native"}}}'])
def test_malformed_plan_file_is_ignored_with_one_warning_and_rewritten(cache, content):
    path = cache / "plans.json"
    path.write_text(content)
    with pytest.warns(RuntimeWarning, match="ignoring"):
        plan = sepconv.explain((1, 4, 9, 9), padding=1)
    data = json.loads(path.read_text())                       # rewritten, valid, holding the plan
    assert plan.key in data[tuner_module.machine_fingerprint()]


def test_concurrent_processes_keep_each_others_plans(cache):
    # three processes tuning two shapes each, at once: all six plans end on disk
    code = ("import sys, sepconv; w = int(sys.argv[1]); "
            "[sepconv.explain((1, 4, 6 + w, 6 + k), padding=1) for k in range(2)]")
    env = {**os.environ, "SEPCONV_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)], env=env) for w in range(3)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    plans = json.loads((cache / "plans.json").read_text())[tuner_module.machine_fingerprint()]
    assert len(plans) == 6


def test_no_home_directory_keeps_plans_in_memory(tmp_path):
    # no HOME, no SEPCONV_CACHE_DIR, no XDG_CACHE_HOME, and a uid without a passwd entry is
    # what Path.home() fails on: simulate it, the call must work and say so once
    code = ("import pathlib, warnings, sepconv\n"
            "def no_home(): raise RuntimeError('Could not determine home directory.')\n"
            "pathlib.Path.home = staticmethod(no_home)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    sepconv.explain((1, 4, 9, 9), padding=1); sepconv.explain((1, 4, 9, 7), padding=1)\n"
            "print(sum('no cache folder' in str(x.message) for x in w))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "SEPCONV_CACHE_DIR", "XDG_CACHE_HOME")}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    assert not any(tmp_path.iterdir())                         # nothing written into the cwd


def test_empty_cache_dir_variable_does_not_write_into_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCONV_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert tuner_module.cache_dir() == tmp_path / "xdg" / "sepconv"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_folder_says_so(cache):
    cache.chmod(0o500)
    try:
        with pytest.warns(RuntimeWarning, match="cannot write the plan cache"):
            sepconv.explain((1, 4, 9, 9), padding=1)
    finally:
        cache.chmod(0o700)


def test_read_only_cache_folder_says_so_even_as_root(cache, monkeypatch):
    # (root ignores permissions: make the write itself fail)
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tuner_module, "atomic_write", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = sepconv.explain((1, 4, 9, 9), padding=1)
    assert plan.choice
    assert [str(w.message) for w in caught if "cannot write the plan cache" in str(w.message)]


def test_auto_never_picks_a_form_that_spreads_nan_or_inf(cache):
    # Winograd transforms spread one Inf over a whole tile; "auto" leaves them to users who
    # name them, so its output has non-finite values exactly where the reference has them
    import torch
    import torch.nn.functional as F

    from sepconv.functional import depthwise_conv2d

    plan = sepconv.explain((1, 8, 16, 16), padding=1)
    assert all("NaN or Inf" in plan.rejected[name] for name in plan.rejected if "winograd" in name)
    assert "winograd" not in plan.choice
    x, w = torch.randn(1, 8, 16, 16), torch.randn(8, 1, 3, 3)
    x[0, 2, 5, 5] = float("inf")
    got, want = depthwise_conv2d(x, w, padding=1), F.conv2d(x, w, padding=1, groups=8)
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
