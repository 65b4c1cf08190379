import json
import os
import subprocess
import sys

import pytest
import torch

import sepconv.train
import sepconv.train.loop
from sepconv.cli import main
from sepconv.data import digits, image_folder, synthetic
from sepconv.models import create_model
from sepconv.train import load_checkpoint, save_checkpoint, train
from test_cli import run


def hide(monkeypatch, module):
    """Make `import module` (and its submodules) fail, as if it were not installed."""
    for name in [n for n in list(sys.modules) if n.startswith(module + ".")] + [module]:
        monkeypatch.setitem(sys.modules, name, None)


def interrupt_after(monkeypatch, epochs):
    """Stop training with KeyboardInterrupt once `epochs` epochs are checkpointed (a kill)."""
    real, calls = sepconv.train.loop.evaluate, []

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) > epochs:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sepconv.train.loop, "evaluate", evaluate)


def test_digits_is_the_real_data_set():
    train_set, test_set = digits(16)
    assert len(train_set) + len(test_set) == 1797        # scikit-learn's digits
    x, y = train_set[0]
    assert x.shape == (1, 16, 16) and 0 <= int(y) <= 9
    assert set(int(t) for _, t in test_set) == set(range(10))


def test_training_learns_and_checkpoints_resume(tmp_path, monkeypatch):
    tr, te = synthetic(384, 8, seed=1)
    model = create_model("mobilenet_v1_small", alpha=0.25)
    r = train(model, tr, te, epochs=2, batch_size=16, progress=False, checkpoint_dir=tmp_path / "a", seed=3)
    assert r.test_accuracy > 0.5                          # 10 classes: chance is 0.1
    state = load_checkpoint(tmp_path / "a" / "last.pt")   # weights_only=True
    assert state["epoch"] == 2 and len(state["history"]) == 2
    # an interrupted run resumes from the checkpoint instead of starting over
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, epochs=3, batch_size=16,
                  progress=False, checkpoint_dir=tmp_path / "b", seed=3)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    again = train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, epochs=3, batch_size=16,
                  progress=False, checkpoint_dir=tmp_path / "b", seed=3)
    assert again.resumed_from_epoch == 2 and len(again.history) == 3


@pytest.fixture(scope="module")
def one_epoch_of_two(tmp_path_factory):
    """A checkpoint folder holding epoch 1 of a 2-epoch run, and the run's arguments."""
    folder = tmp_path_factory.mktemp("ckpt")
    tr, te = synthetic(64, 8)
    args = dict(epochs=2, batch_size=16, progress=False, checkpoint_dir=folder)
    with pytest.MonkeyPatch.context() as m:
        interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, **args)
    return folder, tr, te, args


@pytest.mark.parametrize("change,named", [
    (dict(lr=0.1), "lr 0.05 -> 0.1"),
    (dict(epochs=3), "epochs 2 -> 3"),
    (dict(batch_size=8), "batch_size 16 -> 8"),
    (dict(seed=1), "seed 0 -> 1"),
    (dict(model=dict(alpha=0.5)), "parameter_shapes '"),
    (dict(model=dict(num_classes=5)), "parameter_shapes '"),
    (dict(model=dict(in_channels=3)), "parameter_shapes '"),
    (dict(data=dict(n=80)), "train_examples 48 -> 60"),
    (dict(data=dict(size=9)), "example_shape [1, 8, 8] -> [1, 9, 9]"),
    (dict(config={"data": "digits"}), "data None -> 'digits'"),
])
def test_resume_refuses_a_checkpoint_of_other_settings(one_epoch_of_two, change, named):
    folder, tr, te, args = one_epoch_of_two
    change = dict(change)
    model = create_model("mobilenet_v1_small", **{"alpha": 0.25, **change.pop("model", {})})
    if "data" in change:
        tr, te = synthetic(**{"n": 64, "size": 8, **change.pop("data")})
    with pytest.raises(ValueError, match=r"train: the checkpoint belongs to a run with other settings; resume with "
                                         r"the same ones, or start over with --no-resume") as e:
        train(model, tr, te, **{**args, **change})
    assert f"Received: {folder / 'last.pt'}: " in str(e.value) and named in str(e.value)


def test_resume_with_the_same_settings_and_no_resume(one_epoch_of_two, tmp_path):
    folder, tr, te, args = one_epoch_of_two
    fresh = train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, **{**args, "lr": 0.1, "resume": False,
                                                                             "checkpoint_dir": tmp_path})
    assert fresh.resumed_from_epoch == 0 and len(fresh.history) == 2


def test_resume_of_a_finished_run_says_so(tmp_path):
    tr, te = synthetic(64, 8)
    args = dict(epochs=1, batch_size=16, progress=False, checkpoint_dir=tmp_path)
    train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, **args)
    with pytest.raises(ValueError, match=r"train: the checkpoint's run has finished \(epoch 1 of 1\): nothing is "
                                         r"left to train; start over with --no-resume .* Received: .*last.pt\.$"):
        train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, **args)


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", "truncated", "legacy"])
def test_damaged_or_foreign_checkpoints_are_one_line(tmp_path, capsys, content):
    path = tmp_path / "last.pt"
    if content == "truncated":
        save_checkpoint(path, {"model": torch.ones(1000)})
        content = path.read_bytes()[:500]
    if content == "legacy":   # written by an older train(): no run configuration
        save_checkpoint(path, {"model": {}, "optimizer": {}, "scheduler": {}, "epoch": 1, "history": []})
    else:
        path.write_bytes(content)
        with pytest.raises(ValueError, match=r"load_checkpoint: the file is not a readable checkpoint .*--no-resume"):
            load_checkpoint(path)
    code, out, err = run(["train", "mobilenet_v1_small", "--data", "synthetic", "--size", "8", "--alpha", "0.25",
                          "--epochs", "1", "--checkpoint-dir", str(tmp_path), "--json"], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert str(path) in err and "--no-resume" in err


def test_cli_resume_names_the_changed_flags(tmp_path, capsys):
    base = ["train", "mobilenet_v1_small", "--data", "synthetic", "--size", "8", "--alpha", "0.25", "--epochs", "2",
            "--checkpoint-dir", str(tmp_path), "--json"]
    with pytest.MonkeyPatch.context() as m:
        interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            main(base)
    capsys.readouterr()
    code, _, err = run(base + ["--lr", "0.1", "--size", "9"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "lr 0.05 -> 0.1" in err and "size 8 -> 9" in err and "--no-resume" in err
    code, out, _ = run(base, capsys)
    assert code == 0 and json.loads(out)["resumed_from_epoch"] == 1


def test_cli_seed_gives_the_same_run(capsys):
    argv = ["train", "mobilenet_v1_small", "--data", "synthetic", "--size", "8", "--alpha", "0.25", "--epochs", "1",
            "--seed", "0", "--json"]
    runs = []
    for other in range(3):
        torch.manual_seed(100 + other)   # whatever ran before in the process must not matter
        assert main(argv) == 0
        runs.append(json.loads(capsys.readouterr().out)["history"])
    assert runs[0] == runs[1] == runs[2]


def test_cli_checks_outputs_before_training(tmp_path, capsys, monkeypatch):
    def trained(*a, **k):
        raise AssertionError("trained before the outputs were checked")

    monkeypatch.setattr(sepconv.train, "train", trained)
    (tmp_path / "file").write_text("")
    base = ["train", "mobilenet_v1_small", "--data", "synthetic", "--size", "8"]
    code, _, err = run(base + ["--save", str(tmp_path / "file" / "w.pt")], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "train: `--save` must be in a folder this process can write to." in err
    code, _, err = run(base + ["--save", str(tmp_path)], capsys)
    assert code == 1 and "`--save` must be a file path, not a folder." in err
    code, _, err = run(base + ["--checkpoint-dir", str(tmp_path / "file" / "ckpt")], capsys)
    assert code == 1 and "train: `--checkpoint-dir` must be in a folder this process can write to." in err


def test_cli_final_save_failure_keeps_the_model(tmp_path, capsys, monkeypatch):
    target = tmp_path / "out" / "w.pt"
    real = sepconv.train.save_checkpoint

    def save(path, state):   # the disk fills up while training
        if str(path) == str(target):
            raise OSError(28, "No space left on device")
        real(path, state)

    monkeypatch.setattr(sepconv.train, "save_checkpoint", save)
    code, out, err = run(["train", "mobilenet_v1_small", "--data", "synthetic", "--size", "8", "--alpha", "0.25",
                          "--epochs", "1", "--checkpoint-dir", str(tmp_path / "ckpt"), "--save", str(target),
                          "--json"], capsys)
    rescued = tmp_path / "ckpt" / f"rescued-{os.getpid()}-w.pt"
    assert code == 1 and err.count("\n") == 1 and json.loads(out)["test_accuracy"] >= 0
    assert ("`--save` could not be written after training (No space left on device); the trained model was "
            f"written to {rescued} instead.") in err
    model = create_model("mobilenet_v1_small", alpha=0.25, in_channels=1, num_classes=10)
    model.load_state_dict(load_checkpoint(rescued))


def test_orphan_temporaries_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".last.pt.{int(dead.stdout)}.0badc0de.tmp"
    live = tmp_path / f".last.pt.{os.getppid()}.0badc0de.tmp"   # a writer still running
    orphan.write_bytes(b"half a checkpoint")
    live.write_bytes(b"half a checkpoint")
    tr, te = synthetic(64, 8)
    train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, epochs=1, progress=False, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.pt", live.name])


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "c.pt", {"a": torch.ones(1)})
    finally:
        os.umask(before)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == mode


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": torch.ones(2)})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"a": torch.zeros(2)})
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]        # no temporary left


def test_bad_arguments():
    tr, te = synthetic(64, 8)
    with pytest.raises(ValueError, match=r"`epochs` must be >= 1. Received: epochs=0"):
        train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, epochs=0)
    with pytest.raises(ValueError, match=r"`lr` must be a finite positive number"):
        train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, lr=-1)
    with pytest.raises(ValueError, match=r"`lr` must be a finite positive number. Received: lr=inf"):
        train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, lr=float("inf"))
    with pytest.raises(ValueError, match=r"`timeout` must be a finite positive number of seconds"):
        train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, timeout=0)


def test_two_process_data_parallel_ends_with_identical_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        "import os, torch\n"
        "from sepconv.data import synthetic\n"
        "from sepconv.models import create_model\n"
        "from sepconv.train import train\n"
        "tr, te = synthetic(256, 8, seed=0)\n"
        "m = create_model('mobilenet_v1_small', alpha=0.25)\n"
        "train(m, tr, te, epochs=2, batch_size=32, progress=False)\n"
        f"torch.save(m.state_dict(), os.path.join({str(tmp_path)!r}, 'rank%s.pt' % os.environ['RANK']))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # the native weight gradient comes in the weight's own layout, as DDP's buckets expect
    assert "Grad strides do not match bucket view strides" not in done.stderr
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    start = create_model("mobilenet_v1_small", alpha=0.25).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k                 # DDP keeps replicas identical
    assert any(not torch.equal(a[k], start[k]) for k in a if a[k].is_floating_point())  # and they trained


def test_a_stopped_rank_fails_the_others_within_timeout(tmp_path):
    script = tmp_path / "stopped.py"
    script.write_text(
        "import os, sys, time\n"
        "if os.environ['RANK'] == '1':\n"
        "    time.sleep(300)   # a stopped process\n"
        "from sepconv.cli import main\n"
        "sys.exit(main(['train', 'mobilenet_v1_small', '--data', 'synthetic', '--size', '8', '--alpha', '0.25',\n"
        "               '--epochs', '1', '--json', '--timeout', '3']))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534", str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)   # not gloo's 30 minutes
    assert done.returncode != 0
    assert ("sepconv train: error: train: another process of the run stopped or did not answer within "
            "`--timeout`.") in done.stderr, done.stderr[-2000:]


def test_cli_train_and_errors(capsys, tmp_path):
    assert main(["train", "mobilenet_v1_small", "--data", "synthetic", "--size", "8", "--alpha", "0.25",
                 "--epochs", "1", "--json", "--save", str(tmp_path / "w.pt")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["test_accuracy"] <= 1 and (tmp_path / "w.pt").exists()
    assert main(["train", "mobilenet_v1_smal", "--epochs", "1"]) == 1
    assert "Did you mean 'mobilenet_v1_small'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train"])
    assert e.value.code == 1


def test_cli_help_for_every_command():
    for cmd in ("demo", "train", "cost", "bench", "explain", "tune", "cache"):
        done = subprocess.run([sys.executable, "-m", "sepconv.cli", cmd, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage: sepconv" in done.stdout


def test_demo_runs_small(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--size", "8", "--alpha", "0.25", "--quiet"]) == 0
    rows = json.loads((tmp_path / "demo.json").read_text())
    assert [r["network"] for r in rows] == ["standard", "separable", "versatile"]
    assert rows[1]["macs"] < rows[0]["macs"] / 5 and rows[2]["params"] < rows[0]["params"] / 2
    assert all(r["optimized_max_abs_diff"] < 1e-3 for r in rows)
    assert (tmp_path / "demo.png").stat().st_size > 0


def test_image_folder(tmp_path):
    from PIL import Image

    from sepconv.data import image_folder

    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.new("RGB", (12, 10), (40 * k + i, 100, 200)).save(tmp_path / name / f"{i}.png")
    train_set, test_set = image_folder(tmp_path, size=8, test_fraction=0.2)
    assert len(train_set) == 8 and len(test_set) == 2
    x, y = train_set[0]
    assert x.shape == (3, 8, 8) and int(y) in (0, 1)
    with pytest.raises(ValueError, match=r"image_folder: `root` must be a folder"):
        image_folder(tmp_path / "missing")


def test_image_folder_names_an_unreadable_file(tmp_path, capsys):
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"image_folder: a file is not a readable image; fix or remove it. "
                                         r"Received: .*bad\.png"):
        image_folder(tmp_path, size=8)
    code, _, err = run(["train", "mobilenet_v1_small", "--data", str(tmp_path), "--size", "8"], capsys)
    assert code == 1 and err.count("\n") == 1 and str(tmp_path / "dog" / "bad.png") in err


def test_missing_extras_name_what_to_install(tmp_path, monkeypatch, capsys):
    hide(monkeypatch, "sklearn")
    with pytest.raises(ImportError, match=r"the digits data set needs scikit-learn, which is not installed: "
                                          r"pip install 'sepconv\[data\]'"):
        digits(16)
    hide(monkeypatch, "PIL")
    with pytest.raises(ImportError, match=r"image folders needs pillow, .*pip install 'sepconv\[data\]'"):
        image_folder(tmp_path)
    code, _, err = run(["train", "mobilenet_v1_small", "--epochs", "1"], capsys)   # digits
    assert code == 1 and err == ("sepconv train: error: sepconv: the digits data set needs scikit-learn, which is "
                                 "not installed: pip install 'sepconv[data]'.\n")


def test_missing_rich_tables_name_what_to_install(monkeypatch, capsys):
    import sepconv.demo

    def trained(*a, **k):
        raise AssertionError("trained before the table's package was checked")

    monkeypatch.setattr(sepconv.demo, "run_variants", trained)
    hide(monkeypatch, "rich")
    code, _, err = run(["cost", "mobilenet_v1_small", "--input", "8", "--layers"], capsys)
    assert code == 1 and err.count("\n") == 1 and "pip install 'sepconv[ui]'" in err
    code, _, err = run(["demo", "--quiet"], capsys)
    assert code == 1 and err.count("\n") == 1 and "the demo's table needs rich" in err


def test_training_without_rich_prints_a_line_per_epoch(monkeypatch, capsys):
    hide(monkeypatch, "rich")
    tr, te = synthetic(64, 8)
    r = train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, epochs=2, batch_size=16, label="tiny")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["tiny epoch 1/2", "tiny epoch 2/2"]
    assert lines[1].endswith(f"test accuracy {r.history[1]['test_accuracy']:.3f}")
