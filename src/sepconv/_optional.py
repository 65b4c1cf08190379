"""Optional dependencies: imported where a feature needs them, with an error that names the
extra to install when they are missing."""

from __future__ import annotations

import importlib

# module -> (pip package, sepconv extra)
_PACKAGES = {"sklearn": ("scikit-learn", "data"), "PIL": ("pillow", "data"), "matplotlib": ("matplotlib", "plot"),
             "rich": ("rich", "ui"), "keras": ("keras", "keras"), "onnxruntime": ("onnxruntime", "bench"),
             "openvino": ("openvino", "bench"), "onnx": ("onnx", "bench")}


def require(module: str, purpose: str):
    """Import `module` for `purpose`, or raise an ImportError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package, extra = _PACKAGES.get(module.split(".")[0], (module, None))
        hint = f"pip install 'sepconv[{extra}]'" if extra else f"pip install {package}"
        raise ImportError(f"sepconv: {purpose} needs {package}, which is not installed: {hint}.") from e


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display): the one plotting setup."""
    matplotlib = require("matplotlib", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
