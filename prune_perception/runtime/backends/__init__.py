"""Inference backends, one module each; each imports its runtime only when it is chosen."""

from __future__ import annotations

import importlib
from pathlib import Path

from prune_perception.errors import BackendUnavailableError
from prune_perception.runtime.backends.base import InferenceBackend, parse_device
from prune_perception.runtime.metadata import ModelMetadata

BACKENDS = ("onnxruntime", "tensorrt", "torch")
BACKEND_CHOICES = ("auto",) + BACKENDS

# backend name -> (module, class); the module is imported on first use.
_REGISTRY = {
    "onnxruntime": ("prune_perception.runtime.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "tensorrt": ("prune_perception.runtime.backends.tensorrt_backend", "TensorRTBackend"),
    "torch": ("prune_perception.runtime.backends.torch_backend", "TorchBackend"),
}
_SUFFIX_TO_BACKEND = {
    ".onnx": "onnxruntime",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
    ".trt": "tensorrt",
    ".pt": "torch",
    ".pt2": "torch",
    ".pth": "torch",
    ".torchscript": "torch",
}


def resolve_backend_name(model_path: str | Path, backend: str = "auto") -> str:
    """The backend for a model: the one asked for, or by file suffix for ``auto``."""
    if backend not in BACKEND_CHOICES:
        raise BackendUnavailableError(f"backend must be one of {list(BACKEND_CHOICES)}, got {backend!r}")
    if backend != "auto":
        return backend
    suffix = Path(model_path).suffix.lower()
    if suffix not in _SUFFIX_TO_BACKEND:
        raise BackendUnavailableError(
            f"cannot choose a backend for {Path(model_path).name!r} by its suffix; "
            f"use one of {sorted(_SUFFIX_TO_BACKEND)} or set the backend explicitly"
        )
    return _SUFFIX_TO_BACKEND[suffix]


def create_backend(
    model_path: str | Path,
    backend: str = "auto",
    device: str = "auto",
    metadata: ModelMetadata | None = None,
    intra_op_threads: int = 0,
) -> InferenceBackend:
    """Load ``model_path`` on the chosen backend and device."""
    name = resolve_backend_name(model_path, backend)
    parse_device(device)  # fail early, with the same message for every backend
    module_name, class_name = _REGISTRY[name]
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(model_path, device=device, metadata=metadata, intra_op_threads=intra_op_threads)


__all__ = ["BACKENDS", "BACKEND_CHOICES", "InferenceBackend", "create_backend", "resolve_backend_name"]
