"""Training: a plain loop with a rich progress bar, cosine learning-rate schedule, evaluation
each epoch, safe checkpoints (atomic writes, ``weights_only=True`` loads) and resume after
interruption; data-parallel over processes with torch.distributed (gloo) under torchrun."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from .._files import atomic_write
from .._validation import fail, positive_int


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
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from the file)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def distributed_context():
    """(rank, world_size): initialises gloo from torchrun's environment when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def evaluate(model, dataset, batch_size=256) -> float:
    """Top-1 accuracy of `model` on `dataset`."""
    model.eval()
    correct = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += (model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum().item()
    return correct / max(1, len(dataset))


def train(model, train_set, test_set, epochs=10, batch_size=64, lr=0.05, weight_decay=5e-4,
          seed=0, checkpoint_dir=None, resume=True, progress=True, label="train") -> TrainResult:
    """Train `model` with SGD (momentum 0.9, nesterov) and a cosine schedule with one warm-up
    epoch; evaluate after each epoch; checkpoint to ``checkpoint_dir/last.pt`` after each
    epoch and resume from it when `resume`. Under torchrun (WORLD_SIZE > 1) the model is
    wrapped in DistributedDataParallel, each process sees its shard of every epoch, and only
    rank 0 writes checkpoints and shows progress.

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
    if not (isinstance(lr, (int, float)) and lr > 0):
        fail("train", "`lr` must be a positive number.", f"lr={lr!r}")
    rank, world = distributed_context()
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
    if ckpt is not None and resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = result.resumed_from_epoch = int(state["epoch"])
        result.history = list(state.get("history", []))
    t0 = time.perf_counter()
    show = progress and rank == 0
    bar = None
    if show:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn(f"[bold]{label}[/] epoch {{task.fields[epoch]}}"), BarColumn(),
                       TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]}"), TimeRemainingColumn())
        bar.start()
        task = bar.add_task("", total=(epochs - start_epoch) * len(loader), epoch=start_epoch + 1, loss=0.0, acc="-")
    try:
        for epoch in range(start_epoch, epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            net.train()
            total, n = 0.0, 0
            for x, y in loader:
                loss = F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(y)
                n += len(y)
                if bar is not None:
                    bar.update(task, advance=1, loss=loss.item(), epoch=epoch + 1)
            acc = evaluate(model, test_set)
            result.history.append({"epoch": epoch + 1, "train_loss": total / max(1, n), "test_accuracy": acc})
            if bar is not None:
                bar.update(task, acc=f"{acc:.3f}")
            if ckpt is not None and rank == 0:
                save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                       "scheduler": sched.state_dict(), "epoch": epoch + 1,
                                       "history": result.history})
    finally:
        if bar is not None:
            bar.stop()
    if world > 1:
        # DDP keeps parameters identical; BN running statistics drift per shard. Rank 0's
        # buffers are authoritative (DDP broadcasts them before each forward): end with them.
        for buf in model.buffers():
            dist.broadcast(buf, 0)
    result.test_accuracy = evaluate(model, test_set)
    result.seconds = time.perf_counter() - t0
    return result
