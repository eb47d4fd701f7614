"""The detector node's ``/diagnostics``: per camera, its latency percentiles, rates and deadline
misses against the budget, judged by :func:`~prune_perception.eval.health.evaluate_health`; with
several cameras, the batcher's cycle rate and mean batch; and the node's own problems (a stopped
sim clock, a refused model swap)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from diagnostic_msgs.msg import DiagnosticStatus

from prune_perception.eval.health import HealthLevel, evaluate_health
from prune_perception.ros.diagnostics import build_status, make_status

if TYPE_CHECKING:
    from prune_perception.ros.detector_pipeline import DetectorPipeline


def node_warnings(pipeline: DetectorPipeline, values: dict[str, str]) -> list[str]:
    """Problems of the whole node, not of one camera: a stopped sim clock, a refused model swap.
    Each also goes into ``values``."""
    warnings = []
    timeout = pipeline.params["input_timeout_s"]
    if pipeline.node.get_parameter("use_sim_time").value:
        stalled_s, sim_now_s = pipeline.sim_clock.observe(pipeline.node.get_clock().now().nanoseconds)
        values["sim_time_s"] = f"{sim_now_s:.3f}"
        if timeout > 0 and stalled_s >= timeout:
            problem = (f"use_sim_time is set but no /clock arrived for {stalled_s:.1f} s" if sim_now_s == 0 else
                       f"sim clock stopped: /clock has not advanced for {stalled_s:.1f} s (at {sim_now_s:.3f} s)")
            values["sim_clock"] = problem
            warnings.append(problem)
    if pipeline.model.loading is not None:
        values["model_swap"] = f"loading {pipeline.model.loading}"
    elif (swap := pipeline.model.last_swap) is not None:
        values["model_swap"] = swap.message
        if not swap.succeeded and time.monotonic() - swap.finished_s < pipeline.params["statistics_window_s"]:
            warnings.append(swap.message)
    return warnings


def detector_statuses(pipeline: DetectorPipeline, now: float) -> tuple[list[DiagnosticStatus], list[str]]:
    """One status per camera (and the batcher's, with several), and the ERROR messages among them."""
    detector = pipeline.detector
    extra = {
        "model_path": str(detector.model_path) if detector else pipeline.params["model_path"],
        "backend": detector.backend_name if detector else pipeline.params["backend"],
        "device": detector.device if detector else pipeline.params["device"],
        "model_ready": str(detector is not None).lower(),
    }
    if pipeline.state_note:
        extra["lifecycle_state"] = pipeline.state_note
    if pipeline.model_error:
        extra["model_error"] = pipeline.model_error
    warnings = node_warnings(pipeline, extra)
    hardware = f"{extra['backend']}:{extra['device']}"
    fqn = pipeline.node.get_fully_qualified_name()
    statuses: list[DiagnosticStatus] = []
    errors: list[str] = []
    for camera in pipeline.cameras:
        with pipeline.stats_lock:
            report = camera.stats.report(now)
        silence = None
        if pipeline.running:  # not subscribed (inactive): no input is expected
            silence = now - max(camera.stats.last_input_s or pipeline.subscribed_s, pipeline.subscribed_s)
        level, message = evaluate_health(report, pipeline.health_thresholds, pipeline.model_error, camera.last_input_error,
                                         silence, warnings)
        values = dict(extra)
        if camera.last_input_error:
            values["last_input_error"] = camera.last_input_error
        if camera.tracker is not None:
            values.update({key: str(value) for key, value in camera.tracker.statistics().items()})
        if camera.name:
            values.update(camera=camera.name, image_topic=camera.image_topic,
                          detections_topic=camera.detections_topic)
        name = f"{fqn}: camera {camera.name}" if camera.name else f"{fqn}: detector"
        statuses.append(build_status(name, hardware, level, message, report, values))
        if level == HealthLevel.ERROR:
            errors.append(f"camera {camera.name}: {message}" if camera.name else message)
    if pipeline.multi_camera:
        with pipeline.stats_lock:
            cycle_values = pipeline.cycles.values(now)
        batch = "n/a" if detector is None else ("dynamic" if detector.max_batch is None else detector.max_batch)
        statuses.append(make_status(
            f"{fqn}: batcher", hardware, HealthLevel.OK,
            f"{cycle_values['cycle_rate_hz']:.1f} cycles/s, mean batch {cycle_values['mean_batch_size']:.2f}",
            {"cameras": len(pipeline.cameras), "model_max_batch": batch, "batch_wait_ms": pipeline.params["batch_wait_ms"],
             **cycle_values}))
    return statuses, errors
