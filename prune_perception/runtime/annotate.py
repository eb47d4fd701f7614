"""Draw detections and a status line on an image (for debug images and demo output)."""

from __future__ import annotations

import cv2
import numpy as np

from prune_perception.runtime.postprocess import Detections


def _color(class_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(class_id * 7919 + 17)
    return tuple(int(c) for c in rng.integers(64, 256, size=3))


def draw_detections(image_bgr: np.ndarray, detections: Detections, status: str | None = None) -> np.ndarray:
    """A copy of ``image_bgr`` with boxes, labels and scores, and ``status`` top-left."""
    canvas = image_bgr.copy()
    for det in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in det.box_xyxy)
        color = _color(det.class_id)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, 2)
        label = f"{det.class_name} {det.score:.2f}"
        (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1 - text_h - 4, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + text_w + 2, top + text_h + 4), color, -1)
        cv2.putText(canvas, label, (x1 + 1, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if status:
        cv2.putText(canvas, status, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, status, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
