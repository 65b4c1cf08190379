"""Model zoo: registry (timm-style ``create_model``) and architectures."""

from . import convnext as _convnext, efficientnet as _efficientnet, mobilenet_v2 as _mobilenet_v2  # noqa: F401
from . import resnet as _resnet, vgg as _vgg  # noqa: F401  (register their entrypoints)
from .mobilenet import MobileNetV1
from .registry import create_model, list_models, register_model

__all__ = ["MobileNetV1", "create_model", "list_models", "register_model"]
