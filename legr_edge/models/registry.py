"""A registry of model factories; each model carries its own data config.

``create_model(name, num_classes=..., in_chans=...)`` builds a dense network.
Each entry knows its default input size, mean/std and class count, so data loading
and export read them from the model instead of repeating flags (timm's habit).
A user's own network is named ``package.module:factory``; the factory is called
with ``num_classes`` and ``in_chans`` when it accepts them.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable

from legr_edge.errors import LegrError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What a model expects of its input, stored with the model."""

    name: str
    input_size: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_REGISTRY: dict[str, tuple[Callable[..., Any], ModelConfig]] = {}


def register_model(name: str, input_size: tuple[int, int, int], num_classes: int,
                   mean: tuple[float, ...] = CIFAR_MEAN, std: tuple[float, ...] = CIFAR_STD):
    """Decorator: register ``factory(num_classes, in_chans)`` under ``name``."""
    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = (factory, ModelConfig(name, input_size, num_classes, mean, std))
        return factory
    return wrap


def list_models() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def model_config(name: str) -> ModelConfig:
    _ensure_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name][1]
    if ":" in name:
        return ModelConfig(name, (3, 32, 32), 10, CIFAR_MEAN, CIFAR_STD)
    raise LegrError(f"unknown model {name!r}; known: {', '.join(list_models())} "
                    "(or a user factory as package.module:function)")


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None):
    """Build the dense network ``name`` (registered, or ``package.module:factory``)."""
    factory = _registry_factory(name) if ":" not in name else _import_factory(name)
    kwargs: dict[str, Any] = {}
    params = inspect.signature(factory).parameters
    if num_classes is not None and "num_classes" in params:
        kwargs["num_classes"] = num_classes
    if in_chans is not None and "in_chans" in params:
        kwargs["in_chans"] = in_chans
    try:
        return factory(**kwargs)
    except Exception as e:  # a user's factory may fail in any way
        raise LegrError(f"model factory {name!r} failed: {type(e).__name__}: {e}") from e


def _registry_factory(name: str):
    model_config(name)  # raises for unknown names
    return _REGISTRY[name][0]


def _import_factory(spec: str):
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise LegrError(f"cannot import model module {module_name!r} from --model {spec!r}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise LegrError(f"{module_name!r} has no callable {attr!r} (from --model {spec!r})")
    return factory


def _ensure_builtin() -> None:
    """Import the built-in architectures so they register themselves."""
    from legr_edge.models import mobilenetv2, resnet, resnet_cifar  # noqa: F401
