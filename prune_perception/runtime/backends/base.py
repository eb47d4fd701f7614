"""The interface every inference backend implements, and device-name parsing."""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from prune_perception.errors import BackendUnavailableError, ModelLoadError, ModelMetadataError
from prune_perception.runtime.decoders.ultralytics import is_ultralytics_export, ultralytics_metadata
from prune_perception.runtime.metadata import ModelMetadata, default_yolox_metadata, grid_cells

LOGGER = logging.getLogger(__name__)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def parse_device(device: str) -> tuple[str, int]:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> (kind, index)."""
    match = DEVICE_PATTERN.match(device.strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise BackendUnavailableError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return match.group(1), int(match.group(2) or 0)


def require_model_file(model_path: str | Path) -> Path:
    path = Path(model_path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file is empty: {path}")
    return path


class InferenceBackend(ABC):
    """Runs a model on one input tensor and returns its (first or named) output on the host.

    Backends import their runtime lazily, so that the others work where it is not installed.
    """

    name: str = "base"

    def __init__(self, model_path: str | Path, device: str) -> None:
        self.model_path = require_model_file(model_path)
        self.device = device
        """The device the model really runs on after resolution, e.g. ``cpu`` or ``cuda:0``."""

    @abstractmethod
    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model on a ready input tensor; return its output as float32 numpy."""

    def input_shape(self) -> tuple[int, ...] | None:
        """The model's static input shape, if the model file declares one."""
        return None

    def output_shape(self) -> tuple[int, ...] | None:
        return None

    def max_batch(self) -> int | None:
        """The most images one :meth:`infer` call takes: the model's static batch (1 for most
        files), or None where the batch axis is dynamic."""
        shape = self.input_shape()
        return shape[0] if shape is not None else None

    def model_properties(self) -> dict[str, str]:
        """The key/value metadata the model file carries (ONNX ``metadata_props``); {} if none."""
        return {}

    def inferred_metadata(self) -> ModelMetadata:
        """Metadata for a model without a sidecar: from what the file itself says where it says
        enough (an Ultralytics export names its classes, input size and strides), else from its
        declared I/O shapes with the YOLOX defaults."""
        properties = self.model_properties()
        input_shape, output_shape = self.input_shape(), self.output_shape()
        if is_ultralytics_export(properties):
            return ultralytics_metadata(properties, input_shape, output_shape)
        if input_shape is None or len(input_shape) != 4 or output_shape is None or len(output_shape) != 3:
            raise ModelMetadataError(
                f"{self.model_path} has no metadata sidecar ({self.model_path.name}.json) and its input/output "
                f"shapes are not static (input {_shape(input_shape)}, output {_shape(output_shape)}), so the input "
                f"size and class count cannot be inferred (metadata keys: {sorted(properties) or 'none'}); write a sidecar"
            )
        nhwc = input_shape[3] == 3 and input_shape[1] != 3
        height, width = (input_shape[1], input_shape[2]) if nhwc else (input_shape[2], input_shape[3])
        layout = "NHWC" if nhwc else "NCHW"
        if output_shape[2] == 6 and output_shape[1] != grid_cells(width, height, (8, 16, 32)):
            LOGGER.warning("%s has no metadata and no sidecar: its output %s is read, by its layout alone, as "
                           "end-to-end detections (x1, y1, x2, y2, score, class) with COCO's 80 class names; "
                           "write a sidecar if it is not", self.model_path.name, _shape(output_shape))
            return default_yolox_metadata(width, height, 80, layout=layout, decoder="end_to_end")
        return default_yolox_metadata(input_width=width, input_height=height, num_classes=output_shape[2] - 5,
                                      layout=layout)

    def close(self) -> None:
        """Release runtime resources. Safe to call twice."""


def _shape(shape: tuple | None) -> str:
    return "unknown" if shape is None else str(list(shape))
