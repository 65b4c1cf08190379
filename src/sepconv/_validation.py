"""Argument normalisation and the one error style of the library.

Every message says who complains, what is wrong, what is expected and what was received:
``DepthwiseConv2d: `stride` must be positive. Received: stride=(0, 1).``
"""

from __future__ import annotations

import difflib
from typing import Iterable

import torch


def fail(owner: str, message: str, received: str, exc: type[Exception] = ValueError) -> None:
    raise exc(f"{owner}: {message} Received: {received}.")


def pair(owner: str, name: str, value, minimum: int = 0) -> tuple[int, int]:
    """Normalise an int or a 2-sequence of ints to a tuple, checking ``>= minimum``."""
    if isinstance(value, bool) or not (
        isinstance(value, int)
        or (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    ):
        fail(owner, f"`{name}` must be an int or a pair of ints.", f"{name}={value!r}", TypeError)
    out = (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
    if min(out) < minimum:
        fail(owner, f"`{name}` must be >= {minimum}.", f"{name}={value!r}")
    return out


def positive_int(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(owner, f"`{name}` must be an int.", f"{name}={value!r}", TypeError)
    if value < 1:
        fail(owner, f"`{name}` must be >= 1.", f"{name}={value!r}")
    return value


def choice(owner: str, name: str, value, options: Iterable[str]) -> str:
    options = list(options)
    if not isinstance(value, str) or value not in options:
        close = difflib.get_close_matches(str(value), options, n=2)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        fail(owner, f"`{name}` must be one of {options}.{hint}", f"{name}={value!r}")
    return value


def tensor(owner: str, name: str, value, ndim: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        fail(owner, f"`{name}` must be a torch.Tensor.", f"type {type(value).__name__}", TypeError)
    if value.dim() not in ndim:
        want = " or ".join(f"{n}-D" for n in ndim)
        fail(owner, f"`{name}` must be {want}.", f"{name}.shape={tuple(value.shape)}")
    return value
