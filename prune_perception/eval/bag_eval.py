"""``prune-perception eval-bag``: several models on one bag's camera topic, side by side.

Ground truth comes from a Detection2DArray topic in the bag, a COCO json keyed by frame index or
timestamp, or a teacher model's detections (fidelity mode: the report says so). Offline mode
calls the :class:`Detector` directly on every frame: deterministic, and the per-stage latency
is the runtime's own. (Live mode, through a real node over DDS, is in :mod:`prune_perception.ros.bag_live_eval`.)
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from prune_perception.bags.camera_bag import (
    BagError,
    BagFrame,
    BagTruth,
    CameraBagWriter,
    iter_camera_frames,
    read_ground_truth,
)
from prune_perception.eval.coco_eval import CocoMetrics, ImageBoxes, evaluate_detections
from prune_perception.eval.detector_eval import EVAL_CONFIG
from prune_perception.runtime.detector import Detector, DetectorConfig

LOGGER = logging.getLogger(__name__)
TRUTH_KINDS = ("topic", "coco", "teacher")
OUTPUT_BAG_SCORE = 0.3


@dataclass(frozen=True)
class TruthSource:
    """Where ground truth comes from.

    Attributes:
        kind: ``topic`` (a Detection2DArray topic of the bag), ``coco`` (a COCO json whose images
            carry ``frame_index`` or ``timestamp_ns``; otherwise ``id`` is the frame index), or
            ``teacher`` (a model's detections with score >= ``teacher_score_threshold``: fidelity).
    """

    kind: str = "topic"
    topic: str | None = None
    coco_json: str | None = None
    teacher_model: str | None = None
    teacher_score_threshold: float = 0.3

    def __post_init__(self) -> None:
        if self.kind not in TRUTH_KINDS:
            raise BagError(f"ground truth kind must be one of {TRUTH_KINDS}, got {self.kind!r}")
        if self.kind == "coco" and not self.coco_json:
            raise BagError("ground truth 'coco' needs a coco_json path")
        if self.kind == "teacher" and not self.teacher_model:
            raise BagError("ground truth 'teacher' needs a teacher model")

    @property
    def label(self) -> str:
        return {"topic": f"ground-truth topic {self.topic or '(auto)'}", "coco": f"COCO json {self.coco_json}",
                "teacher": f"FIDELITY to teacher {self.teacher_model} (score >= {self.teacher_score_threshold}), "
                           "not accuracy against human labels"}[self.kind]


@dataclass
class FrameRecord:
    index: int
    stamp_ns: int
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    total_ms: float
    detections: int


@dataclass
class ModelResult:
    name: str
    model: str
    backend: str
    metrics: CocoMetrics
    frames: list[FrameRecord] = field(default_factory=list)
    dropped: int = 0
    """Frames the node did not process (live mode); 0 offline."""
    end_to_end_ms: list[float] = field(default_factory=list)
    """Live mode: header stamp -> published, per frame."""
    mode: str = "offline"


def load_coco_truth(path: str | Path, class_names: Sequence[str]) -> tuple[dict[int, BagTruth], str]:
    """COCO ground truth keyed by timestamp (ns) or frame index; returns (truth, key kind)."""
    try:
        data = json.loads(Path(path).read_text())
        categories = {c["id"]: c["name"] for c in data["categories"]}
        images = data["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BagError(f"cannot read COCO ground truth {path}: {exc}") from exc
    lookup = {name: index for index, name in enumerate(class_names)}
    unknown = sorted({name for name in categories.values() if name not in lookup})
    if unknown:
        raise BagError(f"{path}: categories {unknown} are not classes of the model")
    key_kind = "timestamp_ns" if images and all("timestamp_ns" in image for image in images) else "frame_index"
    keys = {image["id"]: int(image.get(key_kind, image.get("frame_index", image["id"]))) for image in images}
    boxes: dict[int, list] = {key: [] for key in keys.values()}
    ids: dict[int, list] = {key: [] for key in keys.values()}
    for annotation in data.get("annotations", []):
        x, y, w, h = annotation["bbox"]
        key = keys[annotation["image_id"]]
        boxes[key].append((x, y, x + w, y + h))
        ids[key].append(lookup[categories[annotation["category_id"]]])
    truth = {key: BagTruth(np.array(boxes[key], np.float64).reshape(-1, 4), np.array(ids[key], np.int64)) for key in boxes}
    return truth, key_kind


def evaluate_bag_offline(bag: str | Path, models: dict[str, str | Path], truth_source: TruthSource, *,
                         image_topic: str | None = None, max_frames: int = 0, device: str = "cpu",
                         backend: str = "auto", config: DetectorConfig = EVAL_CONFIG,
                         output_bag: str | Path | None = None, progress: bool = True,
                         ) -> tuple[list[ModelResult], dict[str, Any]]:
    """Every model on every frame of the bag's image topic. Returns per-model results and facts
    about the run (frames, ground-truth source) for the report.

    Args:
        output_bag: also write an MCAP bag with the images, the ground truth and every model's
            detections (``/detections/<model>``, score >= 0.3), to view side by side in Foxglove.
    """
    if not models:
        raise BagError("no models to evaluate")
    detectors = {name: Detector(path, backend=backend, device=device, config=config) for name, path in models.items()}
    class_names = next(iter(detectors.values())).metadata.class_names
    for name, detector in detectors.items():
        if list(detector.metadata.class_names) != list(class_names):
            raise BagError(f"model {name} has other classes than {next(iter(detectors))}: they cannot share ground truth")

    truth_by_stamp: dict[int, BagTruth] = {}
    truth_by_index: dict[int, BagTruth] = {}
    if truth_source.kind == "topic":
        truth_by_stamp = read_ground_truth(bag, class_names, truth_source.topic)
    elif truth_source.kind == "coco":
        truth, key_kind = load_coco_truth(truth_source.coco_json, class_names)
        (truth_by_stamp if key_kind == "timestamp_ns" else truth_by_index).update(truth)
    teacher = (Detector(truth_source.teacher_model, backend=backend, device=device,
                        config=DetectorConfig(score_threshold=truth_source.teacher_score_threshold))
               if truth_source.kind == "teacher" else None)

    run = _OfflineRun(detectors, teacher, truth_by_stamp, truth_by_index, models)
    with contextlib.ExitStack() as stack:
        writer = (stack.enter_context(CameraBagWriter(output_bag, fps=10.0, class_names=class_names, compressed=True,
                                                      overwrite=True)) if output_bag else None)
        for frame in tqdm(iter_camera_frames(bag, image_topic), desc="eval-bag", unit="frame", disable=not progress):
            if max_frames and frame.index >= max_frames:
                break
            run.process(frame, writer)
    if not run.ground_truth:
        raise BagError(f"no frame of {bag} has ground truth ({truth_source.label}); "
                       f"{run.frames_without_truth} frames had none")
    for name, result in run.results.items():
        result.metrics = evaluate_detections(run.ground_truth, run.predictions[name], class_names)
    facts = {"bag": str(bag), "mode": "offline", "frames_evaluated": len(run.ground_truth),
             "frames_without_ground_truth": run.frames_without_truth, "ground_truth": truth_source.label,
             "fidelity_mode": truth_source.kind == "teacher", "class_names": list(class_names)}
    return list(run.results.values()), facts


class _OfflineRun:
    """Per-frame state of an offline evaluation: ground truth, predictions and timings per model."""

    def __init__(self, detectors: dict[str, Detector], teacher: Detector | None, truth_by_stamp: dict[int, BagTruth],
                 truth_by_index: dict[int, BagTruth], models: dict[str, str | Path]) -> None:
        self.detectors, self.teacher = detectors, teacher
        self.truth_by_stamp, self.truth_by_index = truth_by_stamp, truth_by_index
        self.results = {name: ModelResult(name, str(models[name]), detector.backend_name, CocoMetrics.empty())
                        for name, detector in detectors.items()}
        self.predictions: dict[str, list[ImageBoxes]] = {name: [] for name in detectors}
        self.ground_truth: list[ImageBoxes] = []
        self.frames_without_truth = 0

    def _truth(self, frame: BagFrame) -> BagTruth | None:
        if self.teacher is not None:
            reference = self.teacher.detect(frame.image).detections
            return BagTruth(reference.boxes_xyxy, reference.class_ids)
        return self.truth_by_stamp.get(frame.stamp_ns) if self.truth_by_stamp else self.truth_by_index.get(frame.index)

    def process(self, frame: BagFrame, writer: CameraBagWriter | None) -> None:
        height, width = frame.image.shape[:2]
        truth = self._truth(frame)
        if truth is None:
            self.frames_without_truth += 1
            return
        self.ground_truth.append(ImageBoxes(frame.index, width, height, truth.boxes_xyxy, truth.class_ids))
        if writer is not None:
            writer.write(frame.image, frame.stamp_ns, truth.boxes_xyxy, truth.class_ids)
        for name, detector in self.detectors.items():  # models in turn on the same frame: the same machine state
            result = detector.detect(frame.image)
            timings, detections = result.timings, result.detections
            self.predictions[name].append(ImageBoxes(frame.index, width, height, detections.boxes_xyxy,
                                                     detections.class_ids, detections.scores))
            self.results[name].frames.append(FrameRecord(
                frame.index, frame.stamp_ns, timings.preprocess_ms, timings.inference_ms, timings.postprocess_ms,
                timings.total_ms, len(detections.scores)))
            if writer is not None:
                shown = detections.scores >= OUTPUT_BAG_SCORE
                writer.write_detections(f"/detections/{_topic_name(name)}", frame.stamp_ns, detections.boxes_xyxy[shown],
                                        detections.class_ids[shown], detections.scores[shown])


def _topic_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)
