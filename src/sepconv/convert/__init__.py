"""Model surgery: conversions between convolution forms, each with a report."""

from .standard import to_standard

__all__ = ["to_standard"]
