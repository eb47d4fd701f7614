"""Multi-object tracking of one camera's detections: ByteTrack, as Roboflow's ``trackers`` package
implements it (Apache-2.0; its Kalman filter and two-stage association, high-confidence boxes first,
then the low ones that ByteTrack keeps instead of dropping).

:class:`DetectionTracker` wraps one tracker for one camera and adds what a vehicle needs around it:

- track ids that are never reused within a run, also across a reset;
- a reset when the stamps go backwards (a bag that loops, a simulator reset), so that no track
  survives a jump back in time;
- tracks aged by the stamps, not by the call count: a camera that drops frames or goes silent ages
  its tracks by the time that passed, and they are lost once ``lost_track_s`` has gone by without
  a match;
- statistics for ``/diagnostics``: active tracks, tracks started per minute, resets.

Tracking is class-agnostic (an object keeps its track when its class flickers); each detection keeps
the class the detector gave it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from prune_perception.runtime.postprocess import Detections

TRACKERS = ("none", "bytetrack")


@dataclass(frozen=True)
class TrackerConfig:
    """ByteTrack's thresholds (the names of ``trackers.ByteTrackTracker``)."""

    track_activation_threshold: float = 0.5
    """Score from which an unmatched detection starts a new track."""
    high_conf_det_threshold: float = 0.6
    """Detections at or above it are matched first; those below only extend existing tracks."""
    minimum_iou_threshold: float = 0.1
    """IoU from which a detection may match a track's predicted box."""
    lost_track_s: float = 1.0
    """Seconds a track survives without a match (an occlusion, dropped frames, a silent camera)."""
    frame_rate: float = 30.0
    """The camera's nominal rate: the Kalman filter's time step between frames."""
    minimum_consecutive_frames: int = 1
    """Matches before a track gets an id (1: at once)."""

    def __post_init__(self) -> None:
        for name in ("track_activation_threshold", "high_conf_det_threshold", "minimum_iou_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not self.lost_track_s > 0 or self.minimum_consecutive_frames < 1:
            raise ValueError("lost_track_s must be > 0 and minimum_consecutive_frames >= 1")
        if not self.frame_rate > 0:
            raise ValueError(f"frame_rate must be > 0, got {self.frame_rate}")


class DetectionTracker:
    """ByteTrack over one camera's :class:`Detections`, stamped in seconds."""

    def __init__(self, config: TrackerConfig = TrackerConfig(), window_s: float = 60.0) -> None:
        import supervision as sv
        from trackers import ByteTrackTracker

        self._detections_type = sv.Detections
        self.config = config
        self._tracker = ByteTrackTracker(
            # the library counts its buffer in frames of a 30 FPS video, whatever frame_rate is
            lost_track_buffer=max(1, math.ceil(config.lost_track_s * 30)), frame_rate=config.frame_rate,
            track_activation_threshold=config.track_activation_threshold,
            minimum_consecutive_frames=config.minimum_consecutive_frames,
            minimum_iou_threshold=config.minimum_iou_threshold, high_conf_det_threshold=config.high_conf_det_threshold)
        self._last_stamp_s: float | None = None
        self._offset = 0
        """Added to the library's ids, which restart at a reset: ids stay unique within the run."""
        self._next_id = 0
        self._starts: deque[float] = deque()
        self._window_s = window_s
        self.resets = 0
        self.last_reset_reason: str | None = None

    def update(self, detections: Detections, stamp_s: float) -> np.ndarray:
        """Each detection's track id ((N,) int64, in the order of ``detections``; -1: not tracked,
        a low-score box that matched no track)."""
        if self._last_stamp_s is not None and stamp_s < self._last_stamp_s:
            self.reset(f"stamp went backwards ({self._last_stamp_s:.3f} s -> {stamp_s:.3f} s)")
        self._last_stamp_s = stamp_s
        count = len(detections)
        boxes = detections.boxes_xyxy.reshape(-1, 4).astype(np.float32)
        candidates = self._detections_type(xyxy=boxes, confidence=detections.scores.astype(np.float32),
                                           class_id=detections.class_ids, data={"index": np.arange(count)})
        tracked = self._tracker.update(candidates, timestamp=stamp_s)
        ids = np.full(count, -1, np.int64)
        if len(tracked):
            library_ids = np.asarray(tracked.tracker_id, np.int64)
            published = np.where(library_ids >= 0, library_ids + self._offset, -1)
            ids[np.asarray(tracked.data["index"], np.int64)] = published
            new = published[published >= self._next_id]
            if new.size:
                now = time.monotonic()
                self._starts.extend([now] * len(np.unique(new)))
                self._next_id = int(new.max()) + 1
        return ids

    def reset(self, reason: str) -> None:
        """Forget every track; the ids that follow are new ones."""
        self._tracker.reset()
        self._offset = self._next_id
        self._last_stamp_s = None
        self.resets += 1
        self.last_reset_reason = reason

    @property
    def active_tracks(self) -> int:
        """Tracks with an id that are still alive (matched recently enough)."""
        return sum(1 for track in self._tracker.tracks if track.tracker_id >= 0)

    def started_per_minute(self, now: float | None = None) -> float:
        """Tracks started in the last ``window_s`` (steady clock), per minute."""
        now = time.monotonic() if now is None else now
        while self._starts and now - self._starts[0] > self._window_s:
            self._starts.popleft()
        return len(self._starts) * 60.0 / self._window_s

    def statistics(self) -> dict[str, float | int | str]:
        values: dict[str, float | int | str] = {"active_tracks": self.active_tracks,
                                                "tracks_started_per_min": round(self.started_per_minute(), 1),
                                                "tracks_started": self._next_id, "tracker_resets": self.resets}
        if self.last_reset_reason:
            values["last_tracker_reset"] = self.last_reset_reason
        return values
