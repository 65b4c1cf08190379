"""Example inputs and outputs of any form (a tensor, a tuple of arguments, keyword arguments,
and outputs that are tensors, tuples, dicts or dataclasses): the one place conversions and
optimize_for_inference turn them into call arguments and compare them leaf by leaf."""

from __future__ import annotations

import dataclasses

import torch
from torch.utils import _pytree as pytree

from .._validation import fail


def call_arguments(owner: str, example_input) -> tuple[tuple, dict]:
    """(args, kwargs) of ``model(*args, **kwargs)``: a tuple is the positional arguments, a dict
    the keyword arguments, anything else the one positional argument."""
    if isinstance(example_input, dict):
        args, kwargs = (), dict(example_input)
    else:
        args, kwargs = (example_input if isinstance(example_input, tuple) else (example_input,)), {}
    if not any(isinstance(x, torch.Tensor) for x in leaves(args, kwargs)[0]):
        fail(owner, "`example_input` must be a tensor, a tuple of arguments or a dict of keyword arguments "
             "holding at least one tensor.", f"{type(example_input).__name__}", TypeError)
    return args, kwargs


def leaves(args, kwargs):
    """(leaves, spec) of a call's arguments."""
    return pytree.tree_flatten((args, kwargs))


def float_leaves(tree) -> list[torch.Tensor]:
    """The floating-point tensors of `tree`, in order, looking inside dataclasses too (torch's
    pytree sees an unregistered dataclass as one leaf)."""
    out = []
    for x in pytree.tree_leaves(tree):
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            out += float_leaves([getattr(x, f.name) for f in dataclasses.fields(x)])
        elif isinstance(x, torch.Tensor) and x.is_floating_point():
            out.append(x)
    return out


def output_difference(want, got) -> tuple[float, float]:
    """(max abs difference over all floating leaves, ||got - want|| / ||want|| over all of
    them together). Outputs of different structure raise a ValueError."""
    a, b = float_leaves(want), float_leaves(got)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        fail("output_difference", "the outputs must have the same structure and shapes.",
             f"{[tuple(x.shape) for x in a]} vs {[tuple(y.shape) for y in b]}")
    pairs = [(x.double(), y.double()) for x, y in zip(a, b) if x.numel()]
    if not pairs:
        return 0.0, 0.0
    max_abs = max((x - y).abs().max().item() for x, y in pairs)
    num = sum(((x - y) ** 2).sum() for x, y in pairs).sqrt()
    den = sum((x ** 2).sum() for x, _ in pairs).sqrt().clamp_min(1e-30)
    return max_abs, (num / den).item()
