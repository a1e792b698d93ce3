"""Backend registry. Modules are imported on lookup, so no runtime is loaded needlessly."""
from __future__ import annotations

import importlib

from legr_edge.device.backends.base import Backend, ModelSpec
from legr_edge.errors import LegrError

_REGISTRY: dict[str, tuple[str, str]] = {
    "onnxruntime": ("legr_edge.device.backends.onnxrt", "OnnxRuntimeBackend"),
    "tensorrt": ("legr_edge.device.backends.tensorrt", "TensorRTBackend"),
    "torch": ("legr_edge.device.backends.torch_eager", "TorchEagerBackend"),
}

__all__ = ["Backend", "ModelSpec", "get_backend", "backend_names"]


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str) -> type[Backend]:
    """The Backend class registered under ``name`` (the profile's ``backend`` key)."""
    try:
        module, cls = _REGISTRY[name]
    except KeyError:
        raise LegrError(f"unknown backend {name!r}; known: {', '.join(backend_names())}") from None
    return getattr(importlib.import_module(module), cls)
