"""Raw model output -> detections: YOLOX grid decode, score threshold, class-aware NMS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import cv2
import numpy as np

from prune_perception.errors import InferenceError
from prune_perception.runtime.preprocess import LetterboxGeometry


class Detection(NamedTuple):
    box_xyxy: tuple[float, float, float, float]
    """(x1, y1, x2, y2) in original-image pixels."""
    score: float
    class_id: int
    class_name: str


@dataclass(frozen=True)
class Detections:
    """All detections of one image as parallel arrays, sorted by descending score."""

    boxes_xyxy: np.ndarray  # (N, 4) float32, original-image pixels
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int64
    class_names: Sequence[str]  # the model's whole class table, indexed by class id
    source_ids: np.ndarray | None = None
    """Per class of the table (int64), its id in the model it was specialized from (the metadata's
    ``class_ids``); None: the index."""

    @classmethod
    def empty(cls, class_names: Sequence[str], source_ids: np.ndarray | None = None) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), class_names,
                   source_ids)

    def published_ids(self) -> np.ndarray:
        """(N,) the class id of each detection as published: its source id where the model was
        specialized, else its index."""
        return self.class_ids if self.source_ids is None else self.source_ids[self.class_ids]

    def __len__(self) -> int:
        return len(self.scores)

    def __iter__(self) -> Iterator[Detection]:
        for box, score, class_id in zip(self.boxes_xyxy.tolist(), self.scores.tolist(), self.class_ids.tolist()):
            yield Detection(tuple(box), score, class_id, self.class_names[class_id])

    def label(self, index: int) -> str:
        return self.class_names[int(self.class_ids[index])]


@dataclass(frozen=True)
class CandidateBoxes:
    """Boxes that passed the score threshold, before NMS, in model-input pixels."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray


class YoloxDecoder:
    """Decodes YOLOX output ``[1, N, 5 + C]`` over a grid of ``strides``.

    For grid cell (gx, gy) at stride s: cx = (dx + gx) * s, cy = (dy + gy) * s,
    w = exp(log w) * s, h = exp(log h) * s; score = objectness * best class score.
    Only rows above the score threshold are decoded.
    """

    def __init__(self, input_width: int, input_height: int, strides: Sequence[int], decoded_in_graph: bool = False):
        self.decoded_in_graph = decoded_in_graph
        grids, cell_strides = [], []
        for stride in strides:
            rows, cols = input_height // stride, input_width // stride
            grid_y, grid_x = np.mgrid[0:rows, 0:cols]
            grids.append(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1))
            cell_strides.append(np.full(rows * cols, stride))
        self.grid = np.concatenate(grids).astype(np.float32)
        self.cell_strides = np.concatenate(cell_strides).astype(np.float32)[:, None]
        self.strides = tuple(strides)

    @property
    def num_cells(self) -> int:
        return len(self.grid)

    def candidates(self, raw: np.ndarray, score_threshold: float) -> CandidateBoxes:
        rows = raw[0] if raw.ndim == 3 else raw
        if rows.ndim != 2 or rows.shape[1] < 6:
            raise InferenceError(f"YOLOX output must be [1, N, 5 + classes], got shape {raw.shape}")
        if not self.decoded_in_graph and rows.shape[0] != self.num_cells:
            raise InferenceError(
                f"model output has {rows.shape[0]} rows, but strides {list(self.strides)} over the input size "
                f"give {self.num_cells} grid cells: the metadata does not match the model"
            )
        # Class scores are <= 1, so only rows whose objectness passes can pass: filter those first.
        rows_index = np.flatnonzero(rows[:, 4] > score_threshold)
        class_scores = rows[rows_index, 5:]
        class_ids = class_scores.argmax(axis=1)
        scores = rows[rows_index, 4] * class_scores[np.arange(len(rows_index)), class_ids]
        passed = scores > score_threshold
        keep = rows_index[passed]
        scores, class_ids = scores[passed], class_ids[passed]
        raw_boxes = rows[keep, :4]
        if self.decoded_in_graph:
            centers, sizes = raw_boxes[:, :2], raw_boxes[:, 2:4]
        else:
            strides = self.cell_strides[keep]
            centers = (raw_boxes[:, :2] + self.grid[keep]) * strides
            sizes = np.exp(np.minimum(raw_boxes[:, 2:4], 20.0)) * strides  # clamp: exp overflow on garbage
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1).astype(np.float32)
        return CandidateBoxes(boxes, scores.astype(np.float32), class_ids.astype(np.int64))


def class_aware_nms(
    boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float, max_detections: int
) -> np.ndarray:
    """Indices of the boxes kept by per-class NMS, by descending score, at most ``max_detections``."""
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    boxes_xywh = np.concatenate([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(
        boxes_xywh.astype(np.float64), scores.astype(np.float32), class_ids.astype(np.int32),
        score_threshold=0.0, nms_threshold=float(iou_threshold),
    )
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return keep[:max_detections]


def postprocess(
    raw: np.ndarray,
    decoder: YoloxDecoder,
    geometry: LetterboxGeometry,
    class_names: Sequence[str],
    score_threshold: float,
    nms_threshold: float,
    max_detections: int,
    source_ids: np.ndarray | None = None,
) -> Detections:
    """Decode, threshold, NMS, and map the boxes back to the original image."""
    if raw.shape[-1] - 5 != len(class_names):
        raise InferenceError(
            f"model output has {raw.shape[-1] - 5} classes but the metadata names {len(class_names)}"
        )
    candidates = decoder.candidates(raw, score_threshold)
    keep = class_aware_nms(candidates.boxes_xyxy, candidates.scores, candidates.class_ids, nms_threshold, max_detections)
    if len(keep) == 0:
        return Detections.empty(class_names, source_ids)
    return Detections(
        boxes_xyxy=geometry.boxes_to_image(candidates.boxes_xyxy[keep]),
        scores=candidates.scores[keep],
        class_ids=candidates.class_ids[keep],
        class_names=class_names,
        source_ids=source_ids,
    )
