"""Data sets: scikit-learn's digits (embedded, real), synthetic images, and image folders."""

from .datasets import digits, image_folder, synthetic

__all__ = ["digits", "image_folder", "synthetic"]
