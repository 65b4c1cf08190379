"""Keras 3 layers on sepconv's kernels: ``DepthwiseConv2D`` and ``SeparableConv2D``.

They are Keras' own layers (same arguments, weights, config and saved files) with a faster
``call`` on the torch backend; on other backends they run Keras' own ``keras.ops`` and warn
once. Needs keras (``pip install 'sepconv[keras]'``) and ``KERAS_BACKEND=torch`` for speed.

Example:
    >>> import os; os.environ.setdefault("KERAS_BACKEND", "torch")  # doctest: +SKIP
    >>> import keras
    >>> from sepconv.keras import SeparableConv2D
    >>> model = keras.Sequential([keras.Input((32, 32, 16)), SeparableConv2D(32, 3, padding="same")])
    >>> model.output_shape
    (None, 32, 32, 32)
"""

from __future__ import annotations

import importlib.util


def _import_keras():
    try:
        import keras  # noqa: F401
    except ImportError as e:
        if importlib.util.find_spec("keras") is None:
            raise ImportError("sepconv.keras needs keras 3, which is not installed: "
                              "pip install 'sepconv[keras]'.") from e
        # keras is there but its backend is not (by default keras imports tensorflow)
        raise ImportError(f"sepconv.keras: keras is installed but failed to import ({e}). Its backend is "
                          "probably missing: set KERAS_BACKEND=torch (before keras is first imported) to "
                          "run on PyTorch, which is also the backend where sepconv's kernels are used.") from e


_import_keras()

from .layers import DepthwiseConv2D, SeparableConv2D  # noqa: E402

__all__ = ["DepthwiseConv2D", "SeparableConv2D"]
