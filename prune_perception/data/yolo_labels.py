"""YOLO txt labels: one ``class cx cy w h`` line per box, coordinates normalised to 0..1."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prune_perception.errors import PrunePerceptionError


def label_path_for(image_path: str | Path) -> Path:
    """``.../images/x.jpg`` -> ``.../labels/x.txt`` (the YOLO dataset layout)."""
    image_path = Path(image_path)
    return image_path.parent.parent / "labels" / f"{image_path.stem}.txt"


def read_yolo_labels(path: str | Path, image_width: int, image_height: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` xyxy in pixels and class ids ``(N,)``. A missing file means no objects."""
    path = Path(path)
    if not path.exists():
        return np.zeros((0, 4), np.float64), np.zeros(0, np.int64)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 5:
            raise PrunePerceptionError(f"{path}:{number}: expected 'class cx cy w h', got {line!r}")
        rows.append([float(value) for value in fields])
    if not rows:
        return np.zeros((0, 4), np.float64), np.zeros(0, np.int64)
    table = np.asarray(rows)
    cx, cy = table[:, 1] * image_width, table[:, 2] * image_height
    width, height = table[:, 3] * image_width, table[:, 4] * image_height
    boxes = np.stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], axis=1)
    return boxes, table[:, 0].astype(np.int64)


def format_yolo_labels(boxes_xyxy: np.ndarray, class_ids: np.ndarray, image_width: int, image_height: int) -> str:
    """The inverse of :func:`read_yolo_labels`: the text of a label file."""
    lines = []
    for (x0, y0, x1, y1), class_id in zip(np.asarray(boxes_xyxy, np.float64), class_ids):
        lines.append(f"{int(class_id)} {(x0 + x1) / 2 / image_width:.6f} {(y0 + y1) / 2 / image_height:.6f} "
                     f"{(x1 - x0) / image_width:.6f} {(y1 - y0) / image_height:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")
