"""Training: a plain loop with a rich progress bar (or a line per epoch), cosine learning-rate
schedule, evaluation each epoch, safe checkpoints (atomic writes, ``weights_only=True`` loads,
the run's settings recorded) and resume after interruption of the same run; data-parallel over
processes with torch.distributed (gloo) under torchrun."""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from .._files import atomic_write, remove_orphans
from .._validation import fail, positive_int

# Seconds a process waits for the others of a data-parallel run before it gives up: gloo's own
# default is 30 minutes, which a stopped rank makes every other rank sit through.
DEFAULT_TIMEOUT_S = 600.0
_START_OVER = "start over with --no-resume (train(..., resume=False))"


@dataclass
class TrainResult:
    """Per-epoch history and the final test accuracy (fraction in [0, 1])."""

    history: list[dict] = field(default_factory=list)
    test_accuracy: float = 0.0
    seconds: float = 0.0
    resumed_from_epoch: int = 0


def save_checkpoint(path, state: dict) -> None:
    """Write `state` atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path) -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from the file). A file
    that cannot be read (empty, truncated, not written by ``torch.save``) raises a ValueError
    naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file surfaces as EOFError, RuntimeError, OSError, KeyError or UnpicklingError
        reason = next(iter(str(e).splitlines()), "")[:120]
        fail("load_checkpoint", f"the file is not a readable checkpoint (empty, truncated or not written by "
                                f"torch.save); delete it, or {_START_OVER}.",
             f"{path} ({type(e).__name__}{': ' + reason if reason else ''})")


def run_config(model, train_set, epochs, batch_size, lr, weight_decay, seed, world, config=None) -> dict:
    """The settings a checkpoint records and a resumed run must share: the caller's `config`
    (model id and arguments, data set: what train() cannot see) and what train() sees itself,
    the model's class and parameter shapes, the number and shape of the examples, the
    optimisation settings and the number of processes."""
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return {**(config or {}), "model_class": type(model).__name__,
            "parameter_shapes": hashlib.sha256(shapes.encode()).hexdigest()[:12],
            "train_examples": len(train_set), "example_shape": list(train_set[0][0].shape) if len(train_set) else [],
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
            "world_size": world}


def _resumable(path, state, config: dict) -> int:
    """The epoch to resume at from checkpoint `state`, or a ValueError saying why it cannot be."""
    keys = ("model", "optimizer", "scheduler", "epoch", "config")
    if not (isinstance(state, dict) and all(k in state for k in keys) and isinstance(state["config"], dict)):
        fail("train", f"the file is not a training checkpoint with a run configuration (written by train() of "
                      f"an older sepconv, or something else); {_START_OVER}.", str(path))
    stored = state["config"]
    changed = [f"{k} {stored.get(k)!r} -> {config.get(k)!r}"
               for k in sorted(stored.keys() | config.keys()) if stored.get(k) != config.get(k)]
    if changed:
        fail("train", f"the checkpoint belongs to a run with other settings; resume with the same ones, or "
                      f"{_START_OVER}.", f"{path}: {', '.join(changed)}")
    if int(state["epoch"]) >= config["epochs"]:
        fail("train", f"the checkpoint's run has finished (epoch {int(state['epoch'])} of {config['epochs']}): "
                      f"nothing is left to train; {_START_OVER}.", str(path))
    return int(state["epoch"])


def distributed_context(timeout: float = DEFAULT_TIMEOUT_S):
    """(rank, world_size): initialises gloo from torchrun's environment when WORLD_SIZE > 1,
    with `timeout` seconds for any collective (a process group the caller made is kept)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _EpochLines:
    """Progress as one plain line per epoch: what training shows when rich (the `ui` extra) is
    not installed, since training must not need it."""

    def __init__(self, label: str, epochs: int):
        self.label, self.epochs = label, epochs

    def step(self, epoch: int, loss: float) -> None:
        pass

    def epoch_done(self, epoch: int, loss: float, acc: float) -> None:
        print(f"{self.label} epoch {epoch}/{self.epochs}: loss {loss:.3f}, test accuracy {acc:.3f}", flush=True)

    def stop(self) -> None:
        pass


class _Bar(_EpochLines):
    """A rich progress bar over the steps left."""

    def __init__(self, progress, label: str, steps: int, start_epoch: int):
        self.bar = progress.Progress(
            progress.TextColumn(f"[bold]{label}[/] epoch {{task.fields[epoch]}}"), progress.BarColumn(),
            progress.TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]}"),
            progress.TimeRemainingColumn())
        self.bar.start()
        self.task = self.bar.add_task("", total=steps, epoch=start_epoch + 1, loss=0.0, acc="-")

    def step(self, epoch: int, loss: float) -> None:
        self.bar.update(self.task, advance=1, loss=loss, epoch=epoch)

    def epoch_done(self, epoch: int, loss: float, acc: float) -> None:
        self.bar.update(self.task, acc=f"{acc:.3f}")

    def stop(self) -> None:
        self.bar.stop()


def _progress(label: str, epochs: int, steps: int, start_epoch: int) -> _EpochLines:
    try:
        import rich.progress
    except ImportError:
        return _EpochLines(label, epochs)
    return _Bar(rich.progress, label, steps, start_epoch)


@torch.no_grad()
def evaluate(model, dataset, batch_size=256) -> float:
    """Top-1 accuracy of `model` on `dataset`."""
    model.eval()
    correct = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += (model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum().item()
    return correct / max(1, len(dataset))


def train(model, train_set, test_set, epochs=10, batch_size=64, lr=0.05, weight_decay=5e-4,
          seed=0, checkpoint_dir=None, resume=True, progress=True, label="train", *, config=None,
          timeout=None, loss_fn=None) -> TrainResult:
    """Train `model` with SGD (momentum 0.9, nesterov) and a cosine schedule with one warm-up
    epoch; evaluate after each epoch; checkpoint to ``checkpoint_dir/last.pt`` after each
    epoch and resume from it when `resume`. Under torchrun (WORLD_SIZE > 1) the model is
    wrapped in DistributedDataParallel, each process sees its shard of every epoch, and only
    rank 0 writes checkpoints and shows progress (a rich bar, or one line per epoch without
    rich).

    A checkpoint records the run's settings (:func:`run_config`: `config`, the caller's own
    description of the run such as model id and data set, plus what train() sees); resuming
    from one with other settings, or one that has finished all `epochs`, raises a ValueError.
    `timeout` is how many seconds a process waits for the others (default
    ``DEFAULT_TIMEOUT_S``) when train() creates the process group. `loss_fn(output, x, y)`
    replaces the cross entropy (distillation passes the teacher's view of `x` this way;
    describe it in `config` so that a resumed run uses the same one). Seed the global RNG before
    building `model` for a reproducible run: its initial weights are drawn then.

    Example:
        >>> from sepconv.data import synthetic
        >>> from sepconv.models import create_model
        >>> tr, te = synthetic(256, 8)
        >>> r = train(create_model("mobilenet_v1_small", alpha=0.25), tr, te, epochs=1, progress=False)
        >>> 0.0 <= r.test_accuracy <= 1.0
        True
    """
    positive_int("train", "epochs", epochs)
    positive_int("train", "batch_size", batch_size)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        fail("train", "`lr` must be a finite positive number.", f"lr={lr!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        fail("train", "`timeout` must be a finite positive number of seconds.", f"timeout={timeout!r}")
    rank, world = distributed_context(DEFAULT_TIMEOUT_S if timeout is None else timeout)
    config = run_config(model, train_set, epochs, batch_size, lr, weight_decay, seed, world, config)
    torch.manual_seed(seed)
    model = model.to(memory_format=torch.channels_last)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=seed) if world > 1 else None
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        drop_last=len(train_set) >= batch_size * world,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps = epochs * len(loader)
    warm = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    result, start_epoch = TrainResult(), 0
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if ckpt is not None and rank == 0:
        remove_orphans(ckpt)   # temporaries of a writer killed mid-write
    if ckpt is not None and resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        start_epoch = result.resumed_from_epoch = _resumable(ckpt, state, config)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        result.history = list(state.get("history", []))
    t0 = time.perf_counter()
    shown = None
    if progress and rank == 0:
        shown = _progress(label, epochs, (epochs - start_epoch) * len(loader), start_epoch)
    try:
        for epoch in range(start_epoch, epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            net.train()
            total, n = 0.0, 0
            for x, y in loader:
                x = x.contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(net(x), y) if loss_fn is None else loss_fn(net(x), x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(y)
                n += len(y)
                if shown is not None:
                    shown.step(epoch + 1, loss.item())
            acc = evaluate(model, test_set)
            result.history.append({"epoch": epoch + 1, "train_loss": total / max(1, n), "test_accuracy": acc})
            if shown is not None:
                shown.epoch_done(epoch + 1, total / max(1, n), acc)
            if ckpt is not None and rank == 0:
                save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                       "scheduler": sched.state_dict(), "epoch": epoch + 1,
                                       "history": result.history, "config": config})
    finally:
        if shown is not None:
            shown.stop()
    if world > 1:
        # DDP keeps parameters identical; BN running statistics drift per shard. Rank 0's
        # buffers are authoritative (DDP broadcasts them before each forward): end with them.
        for buf in model.buffers():
            dist.broadcast(buf, 0)
    result.test_accuracy = evaluate(model, test_set)
    result.seconds = time.perf_counter() - t0
    return result
