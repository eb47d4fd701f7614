"""End-to-end detectors, NMS in the graph: one output ``[1, K, 6]`` of (x1, y1, x2, y2, score, class)
in input pixels, as YOLOv10 and YOLO26 export it (and any model exported with ``nms=True``).

The K rows are already the model's detections, best first or padded with zero scores; the runtime
thresholds them and caps their number, but does not suppress again: a second NMS at another IoU
would drop boxes the model meant to keep.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from prune_perception.errors import InferenceError
from prune_perception.runtime.decoders.base import CandidateBoxes, Decoder


class EndToEndDecoder(Decoder):
    nms_in_graph = True

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def num_classes_of(self, output_shape: Sequence[int | str | None]) -> int | None:
        if len(output_shape) not in (2, 3) or output_shape[-1] != 6:
            raise InferenceError(f"an end-to-end output must be [1, K, 6] (x1, y1, x2, y2, score, class), "
                                 f"got shape {list(output_shape)}")
        return None  # the layout does not say how many classes there are: the metadata does

    def candidates(self, raw: np.ndarray, score_threshold: float) -> CandidateBoxes:
        rows = raw[0] if raw.ndim == 3 else raw
        self.num_classes_of(rows.shape)
        rows = rows[rows[:, 4] > score_threshold]
        class_ids = rows[:, 5]
        if len(rows) and (np.any(class_ids != np.round(class_ids)) or class_ids.min() < 0
                          or class_ids.max() >= self.num_classes):
            raise InferenceError(f"end-to-end output has class ids {sorted(set(class_ids.tolist()))[:8]}, but the "
                                 f"metadata names {self.num_classes} classes: the metadata does not match the model")
        return CandidateBoxes(rows[:, :4].astype(np.float32), rows[:, 4].astype(np.float32), class_ids.astype(np.int64))
