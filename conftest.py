import importlib.util
import os
import tempfile

import torch
from hypothesis import settings

# Tuning plans of the test run go to a private folder, never the user's cache.
os.environ.setdefault("SEPCONV_CACHE_DIR", tempfile.mkdtemp(prefix="sepconv-test-cache-"))
# Keras picks its backend once, at its first import, and defaults to tensorflow (not a
# dependency): the tests and doctests of sepconv.keras run on torch.
os.environ.setdefault("KERAS_BACKEND", "torch")
# the doctests of sepconv.keras import keras, an optional dependency
collect_ignore = [] if importlib.util.find_spec("keras") else ["src/sepconv/keras"]
torch.set_num_threads(2)
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("ci")
