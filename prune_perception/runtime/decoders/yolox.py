"""YOLOX: one output ``[1, N, 5 + C]`` over the grid cells of strides 8/16/32."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from prune_perception.errors import InferenceError
from prune_perception.runtime.decoders.base import CandidateBoxes, Decoder


class YoloxDecoder(Decoder):
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

    def num_classes_of(self, output_shape: Sequence[int | str | None]) -> int:
        last = output_shape[-1] if len(output_shape) in (2, 3) else None
        if not isinstance(last, int) or last < 6:
            raise InferenceError(f"YOLOX output must be [1, N, 5 + classes], got shape {list(output_shape)}")
        return last - 5

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
