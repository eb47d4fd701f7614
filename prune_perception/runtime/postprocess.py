"""Raw model output -> detections: the family's decoder (:mod:`prune_perception.runtime.decoders`),
score threshold, class-aware NMS, boxes mapped back to the image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import cv2
import numpy as np

from prune_perception.errors import InferenceError
from prune_perception.runtime.decoders.base import CandidateBoxes, Decoder
from prune_perception.runtime.decoders.yolox import YoloxDecoder
from prune_perception.runtime.preprocess import LetterboxGeometry

__all__ = ["CandidateBoxes", "Decoder", "Detection", "Detections", "YoloxDecoder", "class_aware_nms", "postprocess"]


class Detection(NamedTuple):
    box_xyxy: tuple[float, float, float, float]
    """(x1, y1, x2, y2) in original-image pixels."""
    score: float
    class_id: int
    """The id the node publishes: for a class-specialized student, the class's id in the model it
    was specialized from (its teacher), so that a student and its teacher mean the same by 2."""
    class_name: str
    class_index: int
    """The class's index in this model's own outputs (what ``class_id`` is for an unspecialized model)."""


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
        published = self.published_ids().tolist()
        for box, score, index, class_id in zip(self.boxes_xyxy.tolist(), self.scores.tolist(), self.class_ids.tolist(),
                                               published):
            yield Detection(tuple(box), score, class_id, self.class_names[index], index)

    def label(self, index: int) -> str:
        return self.class_names[int(self.class_ids[index])]


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
    decoder: Decoder,
    geometry: LetterboxGeometry,
    class_names: Sequence[str],
    score_threshold: float,
    nms_threshold: float,
    max_detections: int,
    source_ids: np.ndarray | None = None,
) -> Detections:
    """Decode, threshold, NMS, and map the boxes back to the original image."""
    classes = decoder.num_classes_of(raw.shape)
    if classes is not None and classes != len(class_names):
        raise InferenceError(f"model output has {classes} classes but the metadata names {len(class_names)}")
    candidates = decoder.candidates(raw, score_threshold)
    if decoder.nms_in_graph:
        keep = np.argsort(-candidates.scores, kind="stable")[:max_detections]
    else:
        keep = class_aware_nms(candidates.boxes_xyxy, candidates.scores, candidates.class_ids, nms_threshold,
                               max_detections)
    if len(keep) == 0:
        return Detections.empty(class_names, source_ids)
    return Detections(
        boxes_xyxy=geometry.boxes_to_image(candidates.boxes_xyxy[keep]),
        scores=candidates.scores[keep],
        class_ids=candidates.class_ids[keep],
        class_names=class_names,
        source_ids=source_ids,
    )
