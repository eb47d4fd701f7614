"""The detector: image in, detections out, with each stage timed. No ROS in here."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from prune_perception.errors import InferenceError, ModelMetadataError
from prune_perception.runtime.backends import create_backend, resolve_backend_name
from prune_perception.runtime.metadata import ModelMetadata, load_sidecar
from prune_perception.runtime.decoders import build_decoder
from prune_perception.runtime.postprocess import Detections, postprocess
from prune_perception.runtime.preprocess import Preprocessor

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds applied after the model; they may change between frames."""

    score_threshold: float = 0.3
    nms_threshold: float = 0.45
    max_detections: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in [0, 1], got {self.nms_threshold}")
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {self.max_detections}")


@dataclass(frozen=True)
class StageTimings:
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms


@dataclass(frozen=True)
class DetectionResult:
    detections: Detections
    timings: StageTimings
    batch_size: int = 1
    """How many images the model call that produced this result ran (its inference time is the
    whole call's)."""


class Detector:
    """A 2D object detector on one of the runtime backends.

    Args:
        model_path: ``.onnx``, a TensorRT engine (``.engine``/``.plan``) or a torch checkpoint.
        backend: ``auto`` (by file suffix), ``onnxruntime``, ``tensorrt`` or ``torch``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        config: score/NMS thresholds and the detection cap.
        metadata: overrides the sidecar; by default it is read from ``<model>.json`` or, for
            models that have none, inferred with YOLOX defaults (logged as a warning).
        intra_op_threads: CPU threads per inference (0: the runtime decides).

    Example:
        >>> detector = Detector("yolox_nano.onnx", device="cpu")
        >>> result = detector.detect(cv2.imread("frame.jpg"))
        >>> for det in result.detections:
        ...     print(det.class_name, det.score, det.box_xyxy)
    """

    def __init__(
        self,
        model_path: str | Path,
        backend: str = "auto",
        device: str = "auto",
        config: DetectorConfig | None = None,
        metadata: ModelMetadata | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        self.model_path = Path(model_path)
        self.backend_name = resolve_backend_name(self.model_path, backend)
        if metadata is None and self.model_path.is_file():
            metadata = load_sidecar(self.model_path)
        self.backend = create_backend(
            self.model_path, self.backend_name, device, metadata=metadata, intra_op_threads=intra_op_threads
        )
        if metadata is None:
            metadata = self.backend.inferred_metadata()
            if metadata.source == "file":
                LOGGER.info("%s has no metadata sidecar; read from the file itself: %s decoder, input %dx%d %s %s, "
                            "%d classes", self.model_path.name, metadata.decoder.type, metadata.input.width,
                            metadata.input.height, metadata.input.channel_order, metadata.input.letterbox_align,
                            metadata.num_classes)
            else:
                LOGGER.warning(
                    "%s has no metadata sidecar; using YOLOX defaults: input %dx%d %s, %s 0..255, pad %d, "
                    "strides %s, %d classes%s",
                    self.model_path.name, metadata.input.width, metadata.input.height, metadata.input.layout,
                    metadata.input.channel_order, metadata.input.pad_value, list(metadata.decoder.strides),
                    metadata.num_classes, " (COCO names)" if metadata.num_classes == 80 else "",
                )
        self.metadata = metadata
        self.decoder = build_decoder(metadata)
        self._check_output_layout()
        self.config = config or DetectorConfig()
        self.max_batch = self.backend.max_batch()
        """The most images one model call takes (None: any number); 1 for a fixed-batch model."""
        # the teacher id of each class of a specialized model, as an array once (indexed every frame)
        self._source_ids = np.asarray(metadata.class_ids, np.int64) if metadata.class_ids is not None else None
        self.preprocessor = Preprocessor(metadata.input)

    @property
    def device(self) -> str:
        return self.backend.device

    def _check_output_layout(self) -> None:
        output_shape = self.backend.output_shape()
        if output_shape is None:
            return
        try:
            classes = self.decoder.num_classes_of(output_shape)
        except InferenceError as exc:
            raise ModelMetadataError(f"{self.model_path.name}: {exc}") from exc
        if classes is not None and classes != self.metadata.num_classes:
            raise ModelMetadataError(
                f"{self.model_path.name} outputs {classes} classes but its metadata names {self.metadata.num_classes}"
            )

    def update_config(self, **changes: float | int) -> None:
        """Change thresholds; validated before anything changes. Takes effect from the next frame."""
        self.config = dataclasses.replace(self.config, **changes)

    def detect(self, image: np.ndarray, pixel_format: str = "BGR") -> DetectionResult:
        """Detect objects in one image (``pixel_format``: BGR, RGB, BGRA, RGBA or GRAY)."""
        return self.detect_batch([(image, pixel_format)])[0]

    def detect_batch(self, images: Sequence[tuple[np.ndarray, str]]) -> list[DetectionResult]:
        """Detect objects in several images of any sizes (each ``(image, pixel_format)``), each
        letterboxed on its own, in as few model calls as :attr:`max_batch` allows. Each result's
        inference time is that of the call it was part of."""
        config = self.config  # one consistent snapshot even if thresholds change meanwhile
        limit = self.max_batch or len(images)
        results: list[DetectionResult] = []
        for first in range(0, len(images), limit):
            chunk = images[first:first + limit]
            tensors, geometries, preprocess_ms = [], [], []
            for image, pixel_format in chunk:
                start = time.perf_counter()
                tensor, geometry = self.preprocessor(image, pixel_format)
                tensors.append(tensor)
                geometries.append(geometry)
                preprocess_ms.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            raw = self.backend.infer(tensors[0] if len(tensors) == 1 else np.concatenate(tensors))
            inference_ms = (time.perf_counter() - start) * 1e3
            for index, geometry in enumerate(geometries):
                start = time.perf_counter()
                detections = postprocess(
                    raw[index:index + 1], self.decoder, geometry, self.metadata.class_names,
                    config.score_threshold, config.nms_threshold, config.max_detections, self._source_ids,
                )
                timings = StageTimings(preprocess_ms[index], inference_ms, (time.perf_counter() - start) * 1e3)
                results.append(DetectionResult(detections, timings, len(chunk)))
        return results

    def warmup(self, runs: int = 2) -> None:
        """Run the model on blank frames so that first-frame latency is not an outlier."""
        spec = self.metadata.input
        blank = np.full((spec.height, spec.width, 3), spec.pad_value, np.uint8)
        for _ in range(runs):
            self.detect(blank)

    def close(self) -> None:
        self.backend.close()
