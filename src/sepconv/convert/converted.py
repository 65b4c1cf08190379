"""Saving and loading converted models without pickled code.

A converted model is one ``torch.save`` file of plain data, loaded with ``weights_only=True``:
the zoo model it was built from (registry id and arguments), the layers the conversions put in
(path, class from a fixed set, constructor arguments), the state dict and the conversion
report. Loading builds the zoo model, puts the layers in and loads the weights strictly.
"""

from __future__ import annotations

from torch import nn

from .._validation import fail
from ..layers import DepthwiseSeparableConv2d, SpatiallySeparableConv2d, VersatileConv2d

FORMAT = "sepconv-converted-model"
VERSION = 1
_CLASSES = {c.__name__: c for c in (DepthwiseSeparableConv2d, SpatiallySeparableConv2d, VersatileConv2d)}
_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "padding_mode")
_OWN = {"DepthwiseSeparableConv2d": ("depth_multiplier",), "SpatiallySeparableConv2d": ("rank",),
        "VersatileConv2d": ("spatial", "delta", "g")}


def layer_record(name: str, layer: nn.Module) -> dict:
    """What rebuilds `layer` (a layer a conversion made: no norm or activation inside)."""
    cls = type(layer).__name__
    if cls not in _CLASSES:
        fail("save_converted", f"a converted layer must be one of {sorted(_CLASSES)}.", f"{name}: {cls}", TypeError)
    args = {k: getattr(layer, k) for k in _CONV + _OWN[cls]}
    return {"name": name, "class": cls, "args": {**args, "bias": layer._has_bias()}}


def payload(model: nn.Module, source: dict, records: list[dict], report: dict | None = None) -> dict:
    """The file's content: `source` is ``{"model": zoo id, "kwargs": {...}}``."""
    return {"format": FORMAT, "version": VERSION, "source": source, "layers": records,
            "state_dict": model.state_dict(), "report": report}


def is_converted(state) -> bool:
    return isinstance(state, dict) and state.get("format") == FORMAT


def rebuild(state: dict, where: str = "model") -> nn.Module:
    """The converted model of a loaded file's content, its weights loaded strictly."""
    from ..models import create_model

    if state.get("version") != VERSION:
        fail("load_converted", f"the file is not of version {VERSION} of the format.", f"{where}: {state.get('version')!r}")
    model = create_model(state["source"]["model"], **state["source"]["kwargs"])
    for rec in state["layers"]:
        if rec["class"] not in _CLASSES:
            fail("load_converted", f"a layer class must be one of {sorted(_CLASSES)}.", f"{where}: {rec['class']!r}")
        *path, last = rec["name"].split(".")
        parent = model.get_submodule(".".join(path))
        setattr(parent, last, _CLASSES[rec["class"]](**rec["args"]))
    model.load_state_dict(state["state_dict"])
    return model.eval()


def save_converted(model: nn.Module, path, source: dict, records: list[dict], report: dict | None = None) -> None:
    """Write a converted model atomically (see the module's docstring for the format).

    Example:
        >>> import tempfile, os
        >>> from sepconv.models import create_model
        >>> from sepconv.convert import to_separable
        >>> m, r = to_separable(create_model("mobilenet_v1_small_standard", alpha=0.25))
        >>> recs = [layer_record(row["name"], m.get_submodule(row["name"])) for row in r.layers]
        >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
        >>> save_converted(m, path, {"model": "mobilenet_v1_small_standard", "kwargs": {"alpha": 0.25}}, recs)
        >>> type(load_converted(path).get_submodule(r.layers[0]["name"])).__name__
        'DepthwiseSeparableConv2d'
    """
    from ..train import save_checkpoint

    save_checkpoint(path, payload(model, source, records, report))


def load_converted(path) -> nn.Module:
    """A model written by :func:`save_converted` (or ``sepconv convert --out``), in eval mode.
    The file is read with ``weights_only=True``: no code runs from it."""
    from ..train import load_checkpoint

    state = load_checkpoint(path)
    if not is_converted(state):
        fail("load_converted", "the file is not a converted model (written by sepconv convert --out).", str(path))
    return rebuild(state, str(path))
