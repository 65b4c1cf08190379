"""Model surgery: conversions between convolution forms, each with a report, and inference
optimisation of any model (optimize_for_inference, with save and load of the result)."""

from .converted import load_converted, save_converted
from .finetune import distillation_loss, finetune
from .optimize import OptimizationReport, OptimizedModel, optimize_for_inference
from .serialize import load, save
from .standard import to_standard
from .surgery import ConversionReport, decompose, fold_batchnorm, to_separable, to_versatile

__all__ = ["ConversionReport", "OptimizationReport", "OptimizedModel", "decompose", "distillation_loss",
           "finetune", "fold_batchnorm", "load", "load_converted", "save_converted",
           "optimize_for_inference", "save", "to_separable", "to_standard", "to_versatile"]
