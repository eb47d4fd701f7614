"""Box IoU and greedy IoU matching of detections to ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes -> ``(N, M)``."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0)


@dataclass(frozen=True)
class MatchResult:
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 0.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 0.0

    def __add__(self, other: "MatchResult") -> "MatchResult":
        return MatchResult(
            self.true_positives + other.true_positives,
            self.false_positives + other.false_positives,
            self.false_negatives + other.false_negatives,
        )


def match_detections(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    pred_labels: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    iou_threshold: float = 0.5,
) -> MatchResult:
    """Greedy matching by descending score: a prediction is a true positive if it overlaps an
    unmatched ground-truth box of the same label with IoU >= ``iou_threshold`` (COCO-style)."""
    order = np.argsort(-np.asarray(pred_scores), kind="stable")
    pred_boxes, pred_labels = np.asarray(pred_boxes).reshape(-1, 4)[order], np.asarray(pred_labels)[order]
    gt_labels = np.asarray(gt_labels)
    ious = box_iou(pred_boxes, gt_boxes)
    matched = np.zeros(len(gt_labels), dtype=bool)
    true_positives = 0
    for index in range(len(pred_boxes)):
        candidates = np.where((gt_labels == pred_labels[index]) & ~matched, ious[index], -1.0)
        if candidates.size and candidates.max() >= iou_threshold:
            matched[int(candidates.argmax())] = True
            true_positives += 1
    return MatchResult(true_positives, len(pred_boxes) - true_positives, int((~matched).sum()))
