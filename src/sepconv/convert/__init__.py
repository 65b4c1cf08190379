"""Model surgery: conversions between convolution forms, each with a report, and
inference optimisation."""

from .optimize import optimize_for_inference
from .standard import to_standard
from .surgery import ConversionReport, decompose, fold_batchnorm, to_separable, to_versatile

__all__ = ["ConversionReport", "decompose", "fold_batchnorm", "optimize_for_inference", "to_separable",
           "to_standard", "to_versatile"]
