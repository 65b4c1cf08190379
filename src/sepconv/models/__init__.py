"""Model zoo: registry and architectures."""

from . import versatile as _versatile  # noqa: F401  (registers resnet50, vgg16 and variants)
from .mobilenet import MobileNetV1
from .registry import create_model, list_models, register_model

__all__ = ["MobileNetV1", "create_model", "list_models", "register_model"]
