"""Data sets as (train, test) pairs of TensorDatasets of float32 images (N, C, H, W) and int64
labels. Nothing is downloaded: digits ship inside scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .._optional import require
from .._validation import fail


def _split(x, y, test_fraction, seed):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def digits(size: int = 16, test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 1,797 handwritten digits (8x8, 10 classes), scaled to [0, 1], normalised
    to zero mean and unit variance, bilinearly resized to `size` x `size`; a fixed stratified-
    by-chance split. Returns (train, test) with images (N, 1, size, size).

    Example:
        >>> train, test = digits(16)
        >>> train[0][0].shape, len(train) + len(test)
        (torch.Size([1, 16, 16]), 1797)
    """
    if not isinstance(size, int) or size < 8:
        fail("digits", "`size` must be an int >= 8.", f"size={size!r}")
    d = require("sklearn.datasets", "the digits data set").load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.int64)
    return _split(x, y, test_fraction, seed)


def synthetic(n: int = 512, size: int = 16, channels: int = 1, classes: int = 10,
              test_fraction: float = 0.25, seed: int = 0):
    """Learnable synthetic images: class k is a fixed random pattern plus noise. For tests and
    for sizes the real data set does not have."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, channels, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = patterns[y] + 0.5 * torch.randn(n, channels, size, size, generator=g)
    return _split(x, y, test_fraction, seed)


def image_folder(root, size: int = 32, grayscale: bool = False, test_fraction: float = 0.2, seed: int = 0):
    """Images under ``root/<class>/*.{png,jpg,jpeg,bmp}`` (classes sorted by folder name),
    resized to `size` x `size`, scaled to [0, 1] and normalised per channel. A file that is not
    a readable image raises a ValueError naming it."""
    Image = require("PIL.Image", "image folders")
    root = Path(root)
    if not root.is_dir():
        fail("image_folder", "`root` must be a folder with one sub-folder per class.", f"root={str(root)!r}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for k, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp"):
                continue
            try:
                img = Image.open(f).convert("L" if grayscale else "RGB").resize((size, size))
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                fail("image_folder", "a file is not a readable image; fix or remove it.", f"{f} ({e})")
            t = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).view(size, size, -1)
            xs.append(t.permute(2, 0, 1) / 255.0)
            ys.append(k)
    if not xs:
        fail("image_folder", "no images found (png, jpg, jpeg, bmp).", f"root={str(root)!r}")
    x = torch.stack(xs)
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return _split(x, torch.tensor(ys), test_fraction, seed)
