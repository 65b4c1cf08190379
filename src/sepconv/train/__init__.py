"""Training loop, checkpoints and distributed data parallelism."""

from .loop import TrainResult, evaluate, load_checkpoint, save_checkpoint, train

__all__ = ["TrainResult", "evaluate", "load_checkpoint", "save_checkpoint", "train"]
