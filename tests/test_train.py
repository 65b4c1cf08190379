import json
import os
import subprocess
import sys

import pytest
import torch

from sepconv.cli import main
from sepconv.data import digits, synthetic
from sepconv.models import create_model
from sepconv.train import load_checkpoint, save_checkpoint, train


def test_digits_is_the_real_data_set():
    train_set, test_set = digits(16)
    assert len(train_set) + len(test_set) == 1797        # scikit-learn's digits
    x, y = train_set[0]
    assert x.shape == (1, 16, 16) and 0 <= int(y) <= 9
    assert set(int(t) for _, t in test_set) == set(range(10))


def test_training_learns_and_checkpoints_resume(tmp_path):
    tr, te = synthetic(384, 8, seed=1)
    model = create_model("mobilenet_v1_small", alpha=0.25)
    r = train(model, tr, te, epochs=2, batch_size=16, progress=False, checkpoint_dir=tmp_path, seed=3)
    assert r.test_accuracy > 0.5                          # 10 classes: chance is 0.1
    state = load_checkpoint(tmp_path / "last.pt")         # weights_only=True
    assert state["epoch"] == 2 and len(state["history"]) == 2
    # an interrupted run resumes from the checkpoint instead of starting over
    again = train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, epochs=3, batch_size=16,
                  progress=False, checkpoint_dir=tmp_path, seed=3)
    assert again.resumed_from_epoch == 2 and len(again.history) == 3


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
    with pytest.raises(ValueError, match=r"`lr` must be a positive number"):
        train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, lr=-1)


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
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    start = create_model("mobilenet_v1_small", alpha=0.25).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k                 # DDP keeps replicas identical
    assert any(not torch.equal(a[k], start[k]) for k in a if a[k].is_floating_point())  # and they trained


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
    for cmd in ("demo", "train", "cost", "bench", "explain"):
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
