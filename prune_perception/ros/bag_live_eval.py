"""Live eval-bag: the bag played through real DDS into a real ``detector_node`` process, per model.

For each model in turn: start ``detector_node`` (``use_sim_time``, its image topic remapped onto
the bag's), wait until the model is loaded, play the bag with :mod:`bag_player_node` (``/clock``
from the bag; at the recorded rate, ×N, or paced by the detections with rate 0), and record what
the node publishes: detections, per-stage and end-to-end latency per frame, and its diagnostics
(drops). Frames the node dropped have no detections and count as misses in AP, as on the vehicle.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import rclpy

from prune_perception.bags.camera_bag import (
    COMPRESSED_TYPE,
    BagError,
    BagTruth,
    class_id_of,
    image_connection_of,
    iter_camera_frames,
    read_ground_truth,
)
from prune_perception.eval.bag_eval import FrameRecord, ModelResult, TruthSource, load_coco_truth
from prune_perception.eval.coco_eval import CocoMetrics, ImageBoxes, evaluate_detections
from prune_perception.ros.bag_player_node import playback_failure, played_images
from prune_perception.ros.detection_messages import msg_to_arrays
from prune_perception.ros.live_session import LiveSessionError, NodeProcess, ros_arguments, run_with_player
from prune_perception.runtime.detector import Detector, DetectorConfig
from prune_perception.runtime.metadata import load_sidecar

BAG_PLAYER_MODULE = "prune_perception.ros.bag_player_node"
LIVE_SCORE_THRESHOLD = 0.05
"""The node's score threshold during live evaluation: low enough for AP, high enough to keep the
Detection2DArray messages (and their publish cost) realistic."""


def _scan_frames(bag: Path, topic: str, max_frames: int, teacher: Detector | None,
                 ) -> tuple[list[int], tuple[int, int], dict[int, BagTruth]]:
    """One pass over the bag's frames: their stamps, the image size, and (fidelity mode) the
    teacher's detections as ground truth."""
    stamps, size, teacher_truth = [], (0, 0), {}
    for frame in iter_camera_frames(bag, topic):
        if max_frames and frame.index >= max_frames:
            break
        stamps.append(frame.stamp_ns)
        size = (frame.image.shape[1], frame.image.shape[0])
        if teacher is not None:
            detections = teacher.detect(frame.image).detections
            teacher_truth[frame.stamp_ns] = BagTruth(detections.boxes_xyxy, detections.class_ids)
    return stamps, size, teacher_truth


def _class_names(model: str | Path) -> tuple[str, ...]:
    metadata = load_sidecar(model)
    return metadata.class_names if metadata else Detector(model, device="cpu").metadata.class_names


def _truth_by_stamp(bag: Path, truth_source: TruthSource, class_names: tuple[str, ...],
                    stamps: list[int]) -> dict[int, BagTruth]:
    """Ground truth from a topic or a COCO json (the teacher's comes from :func:`_scan_frames`)."""
    if truth_source.kind == "topic":
        return read_ground_truth(bag, class_names, truth_source.topic)
    truth, key_kind = load_coco_truth(truth_source.coco_json, class_names)
    return truth if key_kind == "timestamp_ns" else {stamps[i]: t for i, t in truth.items() if i < len(stamps)}


def evaluate_bag_live(bag: str | Path, models: dict[str, str | Path], truth_source: TruthSource,
                      output_dir: str | Path, *, image_topic: str | None = None, rate: float = 1.0,
                      budget_ms: float = 50.0, max_frames: int = 0, device: str = "cpu",
                      detector_params: dict[str, Any] | None = None) -> tuple[list[ModelResult], dict[str, Any]]:
    bag, output = Path(bag), Path(output_dir)
    if not models:
        raise BagError("no models to evaluate")
    class_names = _class_names(next(iter(models.values())))
    topic, msgtype = image_connection_of(bag, image_topic)
    teacher = (Detector(truth_source.teacher_model, device=device,
                        config=DetectorConfig(score_threshold=truth_source.teacher_score_threshold))
               if truth_source.kind == "teacher" else None)
    stamps, (width, height), teacher_truth = _scan_frames(bag, topic, max_frames, teacher)
    if not stamps:
        raise BagError(f"{bag} has no frames on {topic}")
    truth = teacher_truth if teacher is not None else _truth_by_stamp(bag, truth_source, class_names, stamps)
    evaluated = [s for s in stamps if s in truth]
    if not evaluated:
        raise BagError(f"no frame of {bag} has ground truth ({truth_source.label})")
    ground_truth = [ImageBoxes(i, width, height, truth[s].boxes_xyxy, truth[s].class_ids) for i, s in enumerate(evaluated)]
    index_of = {stamp: i for i, stamp in enumerate(evaluated)}
    compressed = msgtype == COMPRESSED_TYPE
    lookup = {name: i for i, name in enumerate(class_names)}
    started_rclpy = not rclpy.ok()
    if started_rclpy:
        rclpy.init()
    results = []
    try:
        for name, model in models.items():
            folder = output / "live" / name
            params = {"use_sim_time": True, "latency_budget_ms": float(budget_ms), "device": device,
                      "input_transport": "compressed" if compressed else "raw", "score_threshold": LIVE_SCORE_THRESHOLD,
                      **(detector_params or {})}
            player_params = {"bag": str(bag), "topics": topic, "rate": float(rate), "wait_for_subscribers": 1,
                             "start_delay_s": 0.5, "max_images": len(stamps)}
            player = NodeProcess(BAG_PLAYER_MODULE, ros_arguments(player_params), folder / "bag_player.log")
            remap = {"image_raw/compressed" if compressed else "image_raw": topic}
            try:
                run = run_with_player(model, player, folder, detector_params=params, detector_remaps=remap)
            except LiveSessionError as exc:
                failure = playback_failure(player.log_text())
                if failure is None:
                    raise
                raise BagError(f"live replay of {bag} for {name} stopped: {failure}. No report was written: it "
                               "would score frames that were never played") from exc
            predictions = []
            frames = []
            latencies = run.latencies
            for position, received in enumerate(run.detections):
                boxes, scores, labels = msg_to_arrays(received.msg)
                ids = np.array([class_id_of(label, lookup) for label in labels], np.int64)
                if received.stamp_ns in index_of:
                    predictions.append(ImageBoxes(index_of[received.stamp_ns], width, height, boxes, ids, scores))
                stage = {key: (latencies[key][position] if position < len(latencies[key]) else math.nan)
                         for key in ("preprocess_ms", "inference_ms", "postprocess_ms", "end_to_end_ms")}
                frames.append(FrameRecord(position, received.stamp_ns, stage["preprocess_ms"], stage["inference_ms"],
                                          stage["postprocess_ms"],
                                          stage["preprocess_ms"] + stage["inference_ms"] + stage["postprocess_ms"],
                                          len(scores)))
            metrics = evaluate_detections(ground_truth, predictions, class_names) if predictions else CocoMetrics.empty()
            counters = run.final_diagnostics.values if run.final_diagnostics else {}
            played = played_images(run.publisher_log)
            result = ModelResult(name, str(model), counters.get("backend", "?"), metrics, frames,
                                 dropped=max(0, played - len(run.detections)),
                                 end_to_end_ms=list(latencies.get("end_to_end_ms", [])[: len(frames)]), mode="live")
            results.append(result)
    finally:
        if started_rclpy:
            rclpy.try_shutdown()
    facts = {"bag": str(bag), "mode": "live", "frames_evaluated": len(evaluated),
             "frames_without_ground_truth": len(stamps) - len(evaluated), "ground_truth": truth_source.label,
             "fidelity_mode": truth_source.kind == "teacher", "class_names": list(class_names),
             "playback_rate": rate if rate else "paced by detections", "image_topic": topic}
    return results, facts
