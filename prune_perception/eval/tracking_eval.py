"""Tracking quality with ``motmetrics`` (the py-motmetrics reference implementation of the CLEAR MOT
and identity metrics): MOTA, MOTP, IDF1, identity switches, fragmentations, per sequence.

Ground truth and hypotheses are boxes with identities, frame by frame; a hypothesis matches a
ground-truth box at IoU >= ``min_iou`` (0.5, the MOTChallenge convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def iou_distances(truth_xyxy: np.ndarray, tracks_xyxy: np.ndarray, min_iou: float) -> np.ndarray:
    """motmetrics' distance matrix: 1 - IoU, NaN (no match possible) below ``min_iou``. (Its own
    ``iou_matrix`` calls ``np.asfarray``, which NumPy 2 removed.)"""
    truth = np.asarray(truth_xyxy, np.float64).reshape(-1, 1, 4)
    tracks = np.asarray(tracks_xyxy, np.float64).reshape(1, -1, 4)
    width = np.clip(np.minimum(truth[..., 2], tracks[..., 2]) - np.maximum(truth[..., 0], tracks[..., 0]), 0, None)
    height = np.clip(np.minimum(truth[..., 3], tracks[..., 3]) - np.maximum(truth[..., 1], tracks[..., 1]), 0, None)
    overlap = width * height
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    iou = overlap / np.maximum(area(truth) + area(tracks) - overlap, 1e-12)
    return np.where(iou >= min_iou, 1.0 - iou, np.nan)


@dataclass
class TrackingEvaluation:
    """Accumulates frames of one sequence; :meth:`summary` gives the metrics."""

    min_iou: float = 0.5
    frames: int = 0
    _accumulator: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        import motmetrics as mm

        self._accumulator = mm.MOTAccumulator(auto_id=True)

    def add_frame(self, truth_ids: np.ndarray, truth_boxes_xyxy: np.ndarray, track_ids: np.ndarray,
                  track_boxes_xyxy: np.ndarray) -> None:
        """One frame: the ground truth's identities and boxes, and the tracker's (untracked boxes,
        id -1, are left out: they are not hypotheses)."""
        tracked = np.asarray(track_ids) >= 0
        hypotheses = np.asarray(track_ids)[tracked]
        distances = iou_distances(truth_boxes_xyxy, np.asarray(track_boxes_xyxy).reshape(-1, 4)[tracked], self.min_iou)
        self._accumulator.update(list(np.asarray(truth_ids).tolist()), list(hypotheses.tolist()), distances)
        self.frames += 1

    def summary(self) -> dict[str, float | int]:
        import motmetrics as mm

        names = ["mota", "motp", "idf1", "num_switches", "num_fragmentations", "num_unique_objects",
                 "mostly_tracked", "num_false_positives", "num_misses"]
        frame = mm.metrics.create().compute(self._accumulator, metrics=names, name="sequence")
        row = frame.loc["sequence"]
        values: dict[str, float | int] = {name: (float(row[name]) if name in ("mota", "motp", "idf1") else int(row[name]))
                                          for name in names}
        values["motp_iou"] = 1.0 - values.pop("motp")  # motmetrics' MOTP is a distance (1 - IoU)
        values["frames"] = self.frames
        return values
