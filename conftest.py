import os
import tempfile

import torch
from hypothesis import settings

# Tuning plans of the test run go to a private folder, never the user's cache.
os.environ.setdefault("SEPCONV_CACHE_DIR", tempfile.mkdtemp(prefix="sepconv-test-cache-"))
torch.set_num_threads(2)
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("ci")
