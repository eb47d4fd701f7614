"""Ultralytics YOLOv8 / YOLO11 detect: one output ``[1, 4 + C, N]`` (or transposed ``[1, N, 4 + C]``).

For each of the N grid cells of strides 8/16/32: the box as cx, cy, w, h in input pixels (decoded
in the graph), then C class scores after a sigmoid. There is no objectness: a box's score is its
best class score. Ultralytics' own export writes the channels-first layout; some export scripts
transpose it, and the decoder takes either, telling them apart by which axis has the N cells.
"""

from __future__ import annotations

import ast
from typing import Sequence

import numpy as np

from prune_perception.errors import InferenceError, ModelMetadataError
from prune_perception.runtime.decoders.base import CandidateBoxes, Decoder
from prune_perception.runtime.metadata import DecoderSpec, InputSpec, ModelMetadata, grid_cells


class UltralyticsDecoder(Decoder):
    def __init__(self, input_width: int, input_height: int, strides: Sequence[int]) -> None:
        self.strides = tuple(strides)
        self.num_cells = grid_cells(input_width, input_height, self.strides)

    def _rows_last(self, output_shape: Sequence[int | str | None]) -> bool:
        """True for ``[.., 4 + C, N]`` (cells on the last axis), False for ``[.., N, 4 + C]``."""
        if len(output_shape) not in (2, 3):
            raise InferenceError(f"Ultralytics output must be [1, 4 + classes, N], got shape {list(output_shape)}")
        rows, columns = output_shape[-2], output_shape[-1]
        if columns == self.num_cells:
            return True
        if rows == self.num_cells:
            return False
        raise InferenceError(
            f"Ultralytics output has shape {list(output_shape)}, but strides {list(self.strides)} over the input size "
            f"give {self.num_cells} grid cells: the metadata does not match the model")

    def num_classes_of(self, output_shape: Sequence[int | str | None]) -> int:
        width = output_shape[-2] if self._rows_last(output_shape) else output_shape[-1]
        if not isinstance(width, int) or width < 5:
            raise InferenceError(f"Ultralytics output must carry 4 box values and classes, got shape {list(output_shape)}")
        return width - 4

    def candidates(self, raw: np.ndarray, score_threshold: float) -> CandidateBoxes:
        values = raw[0] if raw.ndim == 3 else raw
        rows = values.T if self._rows_last(values.shape) else values
        class_scores = rows[:, 4:]
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), class_ids]
        keep = np.flatnonzero(scores > score_threshold)
        centers, sizes = rows[keep, :2], rows[keep, 2:4]
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1).astype(np.float32)
        return CandidateBoxes(boxes, scores[keep].astype(np.float32), class_ids[keep].astype(np.int64))


def is_ultralytics_export(properties: dict[str, str]) -> bool:
    """Whether an ONNX file's ``metadata_props`` are those Ultralytics writes for a detect model."""
    return "Ultralytics" in properties.get("author", "") and properties.get("task", "detect") == "detect" \
        and "names" in properties


def ultralytics_metadata(properties: dict[str, str], input_shape: Sequence[int | str | None] | None,
                         output_shape: Sequence[int | str | None] | None = None) -> ModelMetadata:
    """The metadata of an Ultralytics detect export, from what it writes into ``metadata_props``:
    ``names`` (a Python dict literal of index -> name), ``imgsz`` ([h, w]) and ``stride``
    (the largest; the levels are 8/16/32). Preprocessing is Ultralytics': RGB scaled to 0..1,
    letterboxed centred, padded with 114. An end-to-end export (YOLOv10, YOLO26, ``nms=True``:
    ``end2end`` in its metadata, or an output ``[1, K, 6]`` that is not the grid) gets the
    ``end_to_end`` decoder.

    Raises:
        ModelMetadataError: the properties contradict each other or the model's input.
    """
    try:
        names = ast.literal_eval(properties["names"])
        size = ast.literal_eval(properties.get("imgsz", "None"))
        largest_stride = int(properties.get("stride", "32"))
    except (ValueError, SyntaxError) as exc:
        raise ModelMetadataError(f"Ultralytics metadata is malformed: {exc}") from exc
    if not isinstance(names, dict) or sorted(names) != list(range(len(names))) or not names:
        raise ModelMetadataError(f"Ultralytics metadata 'names' must map 0..N-1 to class names, got {properties['names'][:80]!r}")
    if isinstance(size, int):
        size = [size, size]
    static = [d for d in (input_shape or [])[2:4] if isinstance(d, int) and d > 0]
    if len(static) == 2:
        if size is not None and list(size) != static:
            raise ModelMetadataError(f"Ultralytics metadata says imgsz {list(size)}, but the model's input is "
                                     f"{static[0]}x{static[1]}")
        size = static
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ModelMetadataError(f"Ultralytics metadata: cannot tell the input size (imgsz {properties.get('imgsz')!r}, "
                                 f"input shape {list(input_shape or [])})")
    strides = tuple(s for s in (8, 16, 32, 64) if s <= largest_stride)
    rows = list(output_shape or [])[-2:]
    end_to_end = properties.get("end2end", "False") == "True" or (
        len(rows) == 2 and rows[1] == 6 and grid_cells(int(size[1]), int(size[0]), strides) not in rows)
    return ModelMetadata(
        input=InputSpec(width=int(size[1]), height=int(size[0]), channel_order="RGB", pixel_scale=1 / 255,
                        pad_value=114, letterbox_align="center"),
        decoder=DecoderSpec(type="end_to_end" if end_to_end else "ultralytics", strides=strides),
        class_names=tuple(str(names[i]) for i in range(len(names))),
        source="file",
    )
