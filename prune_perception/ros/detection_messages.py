"""Detections <-> vision_msgs/Detection2DArray (4.x layout)."""

from __future__ import annotations

import numpy as np
from std_msgs.msg import Header
from vision_msgs.msg import Detection2D, Detection2DArray, LabelInfo, ObjectHypothesisWithPose, VisionClass

from prune_perception.runtime.metadata import ModelMetadata
from prune_perception.runtime.postprocess import Detections

CLASS_ID_FORMATS = ("name", "id")


def detections_to_msg(detections: Detections, header: Header, class_id_format: str = "name",
                      track_ids: np.ndarray | None = None) -> Detection2DArray:
    """One Detection2D per detection: bbox center and size in pixels, one hypothesis.

    The array header and every detection header are the image's ``header``, so consumers can
    match detections to the frame they came from. ``class_id`` is the class name or, with
    ``class_id_format="id"``, the numeric class id as text: for a model specialized to a subset of
    its teacher's classes, the teacher's id (the sidecar's ``class_ids``), so ids keep their meaning.
    With ``track_ids``, each Detection2D's ``id`` is its track id ("" where the tracker gave none).
    """
    array = Detection2DArray()
    array.header = header
    boxes = detections.boxes_xyxy.astype(np.float64)
    centers = ((boxes[:, :2] + boxes[:, 2:]) / 2).tolist()
    sizes = (boxes[:, 2:] - boxes[:, :2]).tolist()
    if class_id_format == "name":
        labels = [detections.class_names[class_id] for class_id in detections.class_ids.tolist()]
    else:
        labels = [str(number) for number in detections.published_ids().tolist()]
    scores = detections.scores.tolist()
    items = []
    tracks = [str(t) if t >= 0 else "" for t in track_ids.tolist()] if track_ids is not None else [""] * len(scores)
    for (cx, cy), (width, height), label, score, track in zip(centers, sizes, labels, scores, tracks):
        detection = Detection2D()
        detection.header = header
        detection.id = track
        detection.bbox.center.position.x = cx
        detection.bbox.center.position.y = cy
        detection.bbox.size_x = width
        detection.bbox.size_y = height
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = label
        hypothesis.hypothesis.score = score
        detection.results = [hypothesis]
        items.append(detection)
    array.detections = items
    return array


def msg_to_arrays(msg: Detection2DArray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(boxes_xyxy (N, 4), scores (N,), class_ids)`` of the best hypothesis of each detection."""
    boxes, scores, labels = [], [], []
    for detection in msg.detections:
        cx, cy = detection.bbox.center.position.x, detection.bbox.center.position.y
        half_w, half_h = detection.bbox.size_x / 2, detection.bbox.size_y / 2
        boxes.append([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
        best = max(detection.results, key=lambda result: result.hypothesis.score, default=None)
        scores.append(best.hypothesis.score if best else 0.0)
        labels.append(best.hypothesis.class_id if best else "")
    return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64), labels


def label_info_msg(metadata: ModelMetadata, score_threshold: float, header: Header) -> LabelInfo:
    """The model's class table as published: each class's published id (its teacher's, for a
    specialized student) and its name, and the score threshold results are published above."""
    message = LabelInfo()
    message.header = header
    message.class_map = [VisionClass(class_id=int(class_id), class_name=name)
                         for class_id, name in metadata.names_by_id.items()]
    message.threshold = float(score_threshold)
    return message
