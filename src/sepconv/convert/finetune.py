"""Fine-tuning a converted model by distillation from the model it came from."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import fail


def distillation_loss(teacher: nn.Module, temperature: float = 4.0, hard_label_weight: float = 0.0):
    """`loss_fn(output, x, y)` for :func:`sepconv.train.train`: Hinton et al.'s
    ``(1 - w) * T^2 * KL(softmax(teacher(x) / T) || softmax(output / T)) + w * CE(output, y)``
    (the T^2 keeps the soft term's gradients at the scale of the hard one). The teacher runs
    in eval mode without gradients. Outputs are (N, classes) logits."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        fail("finetune", "`temperature` must be a finite number > 0.", f"temperature={temperature!r}")
    if not (isinstance(hard_label_weight, (int, float)) and 0 <= hard_label_weight <= 1):
        fail("finetune", "`hard_label_weight` must be in [0, 1].", f"hard_label_weight={hard_label_weight!r}")
    t, w = float(temperature), float(hard_label_weight)

    def loss(output, x, y):
        with torch.no_grad():
            target = F.log_softmax(teacher.eval()(x) / t, dim=1)
        soft = F.kl_div(F.log_softmax(output / t, dim=1), target, reduction="batchmean", log_target=True) * t * t
        return soft if w == 0 else (1 - w) * soft + w * F.cross_entropy(output, y)
    return loss


def finetune(student: nn.Module, teacher: nn.Module, train_set, test_set, epochs: int = 3, *,
             temperature: float = 4.0, hard_label_weight: float = 0.0, lr: float = 0.01,
             batch_size: int = 64, seed: int = 0, progress: bool = False):
    """Train `student` (a converted model, in place) for `epochs` to match the softened
    outputs of `teacher` (the model it was converted from) on `train_set`, through
    :func:`sepconv.train.train` (SGD, cosine schedule, evaluation on `test_set` each epoch)
    with :func:`distillation_loss`. Data sets yield (image, label) pairs; the models map
    (N, C, H, W) images to (N, classes) logits. Returns the TrainResult (test accuracy per epoch
    and final).

    Example:
        >>> from sepconv.data import digits
        >>> from sepconv.convert import decompose
        >>> from sepconv.models import create_model
        >>> train_set, test_set = digits(8)
        >>> teacher = create_model("mobilenet_v1_small_standard", alpha=0.25)
        >>> student, _ = decompose(teacher, rank=1)
        >>> result = finetune(student, teacher, train_set, test_set, epochs=1)
        >>> 0.0 <= result.test_accuracy <= 1.0
        True
    """
    from ..train import train

    loss_fn = distillation_loss(teacher, temperature, hard_label_weight)
    teacher = teacher.to(memory_format=torch.channels_last)
    return train(student, train_set, test_set, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                 progress=progress, label="finetune", loss_fn=loss_fn,
                 config={"finetune": "distillation", "temperature": temperature,
                         "hard_label_weight": hard_label_weight})
