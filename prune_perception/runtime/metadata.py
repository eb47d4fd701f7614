"""Model metadata: what the runtime must know about a model besides its weights.

The metadata travels with the model as a JSON sidecar named ``<model file name>.json``
(``yolox_nano.onnx`` -> ``yolox_nano.onnx.json``). It records the input geometry and
normalization, the decoder, the class names and the sha256 of the model file, so that a sidecar
that belongs to another model is refused rather than silently misused. Engines also record the
TensorRT version and GPU they were built for (``engine``).

Example sidecar::

    {
      "format_version": 1,
      "model_sha256": "695e75...",
      "input": {"name": "images", "width": 416, "height": 416, "layout": "NCHW",
                "channel_order": "BGR", "pixel_scale": 1.0, "mean": [0, 0, 0],
                "std": [1, 1, 1], "pad_value": 114, "letterbox_align": "top_left"},
      "decoder": {"type": "yolox", "strides": [8, 16, 32], "decoded_in_graph": false,
                  "output_name": "output"},
      "class_names": ["person", "bicycle", "..."],
      "class_ids": [0, 1, "..."]
    }

``class_ids`` (optional) is each class's id in the model it was specialized from: a student that
keeps person, car and truck of a COCO teacher has ``class_names ["person", "car", "truck"]`` and
``class_ids [0, 2, 7]``, so numeric ids published by the node keep their meaning. Without it, a
class's id is its index.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prune_perception.errors import ModelMetadataError
from prune_perception.files import file_sha256, write_json_atomic

FORMAT_VERSION = 1
LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("BGR", "RGB")
LETTERBOX_ALIGNS = ("top_left", "center")
DECODERS = ("yolox", "ultralytics", "end_to_end")


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the model's input tensor.

    Pixel values are first multiplied by ``pixel_scale`` (1.0 keeps 0..255, 1/255 gives 0..1),
    then ``(x - mean) / std`` per channel, in the model's channel order.
    """

    width: int
    height: int
    name: str | None = None
    layout: str = "NCHW"
    channel_order: str = "BGR"
    pixel_scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad_value: int = 114
    letterbox_align: str = "top_left"

    def __post_init__(self) -> None:
        for name in ("width", "height", "pad_value"):
            value = getattr(self, name)
            if not _is_integer(value):
                raise ModelMetadataError(f"input.{name} must be an integer, got {value!r}")
        if self.width <= 0 or self.height <= 0:
            raise ModelMetadataError(f"input size must be positive, got {self.width}x{self.height}")
        _check_choice("input.layout", self.layout, LAYOUTS)
        _check_choice("input.channel_order", self.channel_order, CHANNEL_ORDERS)
        _check_choice("input.letterbox_align", self.letterbox_align, LETTERBOX_ALIGNS)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ModelMetadataError("input.mean and input.std need exactly 3 values")
        if any(value <= 0 for value in self.std):
            raise ModelMetadataError(f"input.std values must be > 0, got {list(self.std)}")
        if not 0 <= self.pad_value <= 255:
            raise ModelMetadataError(f"input.pad_value must be in 0..255, got {self.pad_value}")
        if self.pixel_scale <= 0:
            raise ModelMetadataError(f"input.pixel_scale must be > 0, got {self.pixel_scale}")


@dataclass(frozen=True)
class DecoderSpec:
    """How raw model output becomes boxes.

    ``yolox``: output ``[1, N, 5 + C]`` with N grid cells over ``strides``; each row holds
    (dx, dy, log w, log h) unless ``decoded_in_graph`` (then cx, cy, w, h in input pixels),
    objectness and C class scores, both already passed through a sigmoid.

    ``ultralytics`` (YOLOv8 / YOLO11 detect): output ``[1, 4 + C, N]`` (or ``[1, N, 4 + C]``),
    cx, cy, w, h in input pixels and C class scores after a sigmoid, no objectness.

    ``end_to_end`` (NMS in the graph: YOLOv10, YOLO26, ``nms=True`` exports): output ``[1, K, 6]``,
    x1, y1, x2, y2 in input pixels, score, class index; thresholded and capped, not suppressed again.
    """

    type: str = "yolox"
    strides: tuple[int, ...] = (8, 16, 32)
    decoded_in_graph: bool = False
    output_name: str | None = None

    def __post_init__(self) -> None:
        _check_choice("decoder.type", self.type, DECODERS)
        if not all(_is_integer(stride) for stride in self.strides):
            raise ModelMetadataError(f"decoder.strides must be integers, got {list(self.strides)}")
        if not isinstance(self.decoded_in_graph, bool):
            raise ModelMetadataError(f"decoder.decoded_in_graph must be true or false, got {self.decoded_in_graph!r}")
        if not self.strides or any(stride <= 0 for stride in self.strides):
            raise ModelMetadataError(f"decoder.strides must be positive, got {list(self.strides)}")


@dataclass(frozen=True)
class EngineInfo:
    """Where and how a TensorRT engine was built; an engine only runs where these match."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str = "fp32"
    onnx_sha256: str | None = None


@dataclass(frozen=True)
class ModelMetadata:
    input: InputSpec
    decoder: DecoderSpec
    class_names: tuple[str, ...]
    model_sha256: str | None = None
    engine: EngineInfo | None = None
    source: str = field(default="sidecar", compare=False)
    """``sidecar`` when read from a file, ``defaults`` when inferred from the model itself."""
    class_ids: tuple[int, ...] | None = None
    """Each class's id in the model this one was specialized from (None: its index)."""

    def __post_init__(self) -> None:
        if self.class_ids is not None:
            if len(self.class_ids) != len(self.class_names):
                raise ModelMetadataError(f"class_ids has {len(self.class_ids)} entries for {len(self.class_names)} "
                                         "class_names")
            if len(set(self.class_ids)) != len(self.class_ids) or any(i < 0 for i in self.class_ids):
                raise ModelMetadataError(f"class_ids must be distinct non-negative integers, got {list(self.class_ids)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def output_class_ids(self) -> tuple[int, ...]:
        """The id published for each output class: ``class_ids``, or the index."""
        return self.class_ids if self.class_ids is not None else tuple(range(len(self.class_names)))

    @property
    def names_by_id(self) -> dict[int, str]:
        """Published class id -> class name."""
        return dict(zip(self.output_class_ids, self.class_names))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model_sha256": self.model_sha256,
            "input": dataclasses.asdict(self.input),
            "decoder": dataclasses.asdict(self.decoder),
            "class_names": list(self.class_names),
        }
        if self.class_ids is not None:
            data["class_ids"] = list(self.class_ids)
        if self.engine is not None:
            data["engine"] = dataclasses.asdict(self.engine)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "sidecar") -> "ModelMetadata":
        if not isinstance(data, dict):
            raise ModelMetadataError("metadata must be a JSON object")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ModelMetadataError(
                f"metadata format_version {version} is not supported (this runtime reads {FORMAT_VERSION})"
            )
        unknown = set(data) - {"format_version", "model_sha256", "input", "decoder", "class_names", "class_ids", "engine"}
        if unknown:
            raise ModelMetadataError(f"unknown metadata keys: {sorted(unknown)}")
        try:
            input_data = dict(data["input"])
            for key in ("mean", "std"):
                if key in input_data:
                    input_data[key] = tuple(float(v) for v in input_data[key])
            decoder_data = dict(data.get("decoder", {}))
            if "strides" in decoder_data:
                decoder_data["strides"] = tuple(decoder_data["strides"])
            class_names = tuple(str(name) for name in data["class_names"])
            engine = EngineInfo(**data["engine"]) if data.get("engine") else None
            raw_ids = data.get("class_ids")
            if raw_ids is not None and (not isinstance(raw_ids, list) or
                                        not all(_is_integer(i) for i in raw_ids)):
                raise ModelMetadataError(f"class_ids must be a list of integers, got {raw_ids!r}")
            class_ids = tuple(raw_ids) if raw_ids is not None else None
            metadata = cls(
                input=InputSpec(**input_data),
                decoder=DecoderSpec(**decoder_data),
                class_names=class_names,
                model_sha256=data.get("model_sha256"),
                engine=engine,
                source=source,
                class_ids=class_ids,
            )
        except KeyError as exc:
            raise ModelMetadataError(f"metadata is missing the required key {exc}") from exc
        except (TypeError, ValueError, OverflowError) as exc:  # unknown or missing fields, values of the wrong kind
            raise ModelMetadataError(f"malformed metadata: {exc}") from exc
        if not metadata.class_names:
            raise ModelMetadataError("metadata class_names is empty")
        return metadata


def _is_integer(value: Any) -> bool:
    """An integer as JSON writes one: ``32`` (or a numpy integer), not ``32.0`` and not ``true``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ModelMetadataError(f"{name} must be one of {list(choices)}, got {value!r}")


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """The sidecar of ``model.onnx`` is ``model.onnx.json`` in the same folder."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def load_sidecar(model_path: str | os.PathLike[str], verify_sha256: bool = True) -> ModelMetadata | None:
    """Read the sidecar of ``model_path``; ``None`` if there is none.

    Raises:
        ModelMetadataError: the sidecar is malformed, or its sha256 names another model file.
    """
    path = sidecar_path(model_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelMetadataError(f"cannot read metadata sidecar {path}: {exc}") from exc
    try:
        metadata = ModelMetadata.from_dict(data)
    except ModelMetadataError as exc:
        raise ModelMetadataError(f"{path}: {exc}") from exc
    if verify_sha256 and metadata.model_sha256 and Path(model_path).is_file():
        actual = file_sha256(model_path)
        if actual != metadata.model_sha256:
            raise ModelMetadataError(
                f"{path} belongs to another model: it records sha256 {metadata.model_sha256[:12]}..., "
                f"but {model_path} has {actual[:12]}... Re-export the model or delete the stale sidecar."
            )
    return metadata


def write_sidecar(model_path: str | os.PathLike[str], metadata: ModelMetadata,
                  model_file: str | os.PathLike[str] | None = None) -> Path:
    """Write ``metadata`` next to ``model_path``, recording the sha256 of the model's bytes, read
    from ``model_file`` where they still sit in a temporary file (default: ``model_path``)."""
    metadata = dataclasses.replace(metadata, model_sha256=file_sha256(model_file or model_path))
    path = sidecar_path(model_path)
    write_json_atomic(path, metadata.to_dict())
    return path


def default_yolox_metadata(
    input_width: int,
    input_height: int,
    num_classes: int,
    input_name: str | None = None,
    output_name: str | None = None,
    layout: str = "NCHW",
    decoder: str = "yolox",
) -> ModelMetadata:
    """Metadata for a model that has no sidecar: the YOLOX conventions.

    BGR, pixel values 0..255, no mean/std, top-left letterbox padded with 114, strides 8/16/32,
    and COCO class names for 80 classes (``class_<i>`` otherwise).
    """
    from prune_perception.runtime.class_names import default_class_names

    return ModelMetadata(
        input=InputSpec(width=input_width, height=input_height, name=input_name, layout=layout),
        decoder=DecoderSpec(type=decoder, output_name=output_name),
        class_names=default_class_names(num_classes),
        source="defaults",
    )


def grid_cells(width: int, height: int, strides: tuple[int, ...]) -> int:
    """The grid cells a dense detector's output has over ``strides`` at a ``width`` x ``height`` input."""
    return sum((height // stride) * (width // stride) for stride in strides)
