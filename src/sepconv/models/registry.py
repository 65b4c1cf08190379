"""Model registry (timm-style): ``@register_model`` entrypoints, ``create_model``, ``list_models``."""

from __future__ import annotations

import fnmatch
from typing import Callable

from .._validation import choice

_MODELS: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Register `fn` under its own name; it must return an nn.Module and accept **kwargs."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"register_model: {fn.__name__!r} is already registered.")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model ids matching a shell-style `pattern`, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs):
    """Build a registered model, e.g. ``create_model("mobilenet_v1_050", num_classes=10)``.

    Unknown names raise a ValueError that suggests close matches.
    """
    choice("create_model", "name", name, list(_MODELS))
    return _MODELS[name](**kwargs)


def input_channels(model) -> int:
    """Input channels of a model: those of its first convolution (3 if it has none)."""
    from torch import nn

    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3
