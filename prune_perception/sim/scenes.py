"""Procedural driving scenes with exact ground truth, deterministic by seed.

A pinhole camera at ``camera_height`` metres looks down a straight road. Objects live in road
coordinates (lateral ``x`` and forward ``z`` in metres) and are projected every frame, so they
shrink with distance and move with the ego vehicle and on their own. Drawing goes far to near
(painter's algorithm) into the image and into an id map at the same time; each object's box is
the extent of its *visible* pixels, and objects mostly hidden behind others are not labelled. So
the ground truth matches what is drawn.

Example:
    >>> scenes = SceneGenerator(SceneConfig(width=640, height=384), seed=7)
    >>> frame = scenes.next_frame()   # frame.image (BGR), frame.boxes_xyxy, frame.class_ids
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

SCENE_CLASSES = ("person", "bicycle", "car", "bus", "truck", "traffic light")
"""COCO class names, in the sample teacher's class order."""
PERSON, BICYCLE, CAR, BUS, TRUCK, TRAFFIC_LIGHT = range(len(SCENE_CLASSES))

# Real-world sizes in metres: (width, height, length along the road)
_SIZES = {CAR: (1.8, 1.5, 4.5), TRUCK: (2.5, 3.4, 8.0), BUS: (2.6, 3.2, 12.0), PERSON: (0.55, 1.75, 0.4),
          BICYCLE: (0.6, 1.1, 1.8), TRAFFIC_LIGHT: (0.45, 1.1, 0.3)}
_VEHICLE_COLOURS = ((200, 200, 205), (30, 30, 35), (40, 40, 170), (150, 90, 30), (40, 120, 40), (200, 170, 60),
                    (90, 90, 95), (20, 110, 220), (230, 230, 240))


def pinhole_intrinsics(focal_px: float, width: int, height: int) -> tuple[list[float], list[float]]:
    """CameraInfo ``k`` (3x3) and ``p`` (3x4), row-major, of an ideal pinhole centred in the image."""
    cx, cy = width / 2, height / 2
    return ([focal_px, 0.0, cx, 0.0, focal_px, cy, 0.0, 0.0, 1.0],
            [focal_px, 0.0, cx, 0.0, 0.0, focal_px, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


@dataclass(frozen=True)
class SceneConfig:
    width: int = 640
    height: int = 384
    focal_px: float | None = None
    """None: a 90 degree horizontal field of view."""
    camera_height: float = 1.4
    horizon: float = 0.42
    """Horizon row as a fraction of the height."""
    lanes: int = 3
    lane_width: float = 3.5
    ego_speed: float = 12.0
    """Metres per second."""
    fps: float = 10.0
    max_objects: int = 10
    noise_sigma: float = 4.0
    min_box_pixels: int = 6
    min_visible_fraction: float = 0.35


@dataclass
class SceneObject:
    class_id: int
    x: float
    z: float
    speed: float
    """Forward speed (m/s, same direction as the ego vehicle)."""
    lateral_speed: float
    colour: tuple[int, int, int]
    light_state: int = 0
    object_id: int = -1
    """The object's identity, unique within a generator's sequence (the tracking ground truth)."""


@dataclass
class SceneFrame:
    index: int
    stamp: float
    image: np.ndarray
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray
    objects: list[SceneObject] = field(default_factory=list)
    """The visible objects, one per box, in the boxes' order."""

    @property
    def object_ids(self) -> np.ndarray:
        """(N,) each box's object identity, stable across the frames the object is visible in."""
        return np.array([obj.object_id for obj in self.objects], np.int64)


class SceneGenerator:
    """An endless, deterministic sequence of frames: the same seed and config give the same pixels."""

    def __init__(self, config: SceneConfig = SceneConfig(), seed: int = 0) -> None:
        if config.width < 64 or config.height < 64:
            raise ValueError("scene images must be at least 64x64")
        if config.fps <= 0:
            raise ValueError("fps must be positive")
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.focal = config.focal_px or config.width / 2.0
        self.index = 0
        self.travelled = 0.0
        self.objects: list[SceneObject] = []
        self._spawned = 0
        self.light_phase = float(self.rng.uniform(0, 2 * math.pi))
        self.sky = tuple(int(v) for v in self.rng.integers(150, 235, size=3))
        for _ in range(config.max_objects):
            self._spawn(initial=True)

    # ---------------------------------------------------------------- the world
    def _road_half_width(self) -> float:
        return self.config.lanes * self.config.lane_width / 2

    def _spawn(self, initial: bool = False) -> None:
        rng, half = self.rng, self._road_half_width()
        class_id = int(rng.choice([CAR, CAR, CAR, TRUCK, BUS, PERSON, PERSON, BICYCLE, TRAFFIC_LIGHT]))
        z = float(rng.uniform(6, 40) if initial else rng.uniform(25, 45))
        if class_id in (CAR, TRUCK, BUS):
            lane = int(rng.integers(self.config.lanes))
            x = -half + (lane + 0.5) * self.config.lane_width + float(rng.normal(0, 0.2))
            speed, lateral = float(rng.uniform(0.5, 1.3) * self.config.ego_speed), 0.0
        elif class_id == TRAFFIC_LIGHT:
            x = float(rng.choice([-1, 1]) * (half + rng.uniform(0.8, 2.5)))
            speed, lateral = 0.0, 0.0
        else:  # pedestrians and cyclists on the roadside, some crossing
            side = float(rng.choice([-1, 1]))
            x = side * float(half + rng.uniform(0.5, 3.0))
            crossing = rng.random() < 0.4
            speed = 0.0 if class_id == PERSON else float(rng.uniform(2, 6))
            lateral = -side * float(rng.uniform(0.8, 1.6)) if crossing else 0.0
        colour = tuple(int(c) for c in _VEHICLE_COLOURS[int(rng.integers(len(_VEHICLE_COLOURS)))])
        if class_id in (PERSON, BICYCLE):
            colour = tuple(int(c) for c in rng.integers(20, 230, size=3))
        self.objects.append(SceneObject(class_id, x, z, speed, lateral, colour, int(rng.integers(3)), self._spawned))
        self._spawned += 1

    def _advance(self, dt: float) -> None:
        self.travelled += self.config.ego_speed * dt
        for obj in self.objects:
            obj.z += (obj.speed - self.config.ego_speed) * dt
            obj.x += obj.lateral_speed * dt
        limit = self._road_half_width() + 6
        self.objects = [o for o in self.objects if 3.0 < o.z < 55 and abs(o.x) < limit]
        while len(self.objects) < self.config.max_objects:
            self._spawn()

    # ---------------------------------------------------------------- drawing
    def _project(self, x: float, y: float, z: float) -> tuple[float, float]:
        """Road point (x right, y up from the road, z forward) -> pixel."""
        cfg = self.config
        u = cfg.width / 2 + self.focal * x / z
        v = cfg.horizon * cfg.height + self.focal * (cfg.camera_height - y) / z
        return u, v

    def _draw_background(self, image: np.ndarray, brightness: float) -> None:
        cfg = self.config
        horizon = int(cfg.horizon * cfg.height)
        top = np.array(self.sky, np.float32)
        rows = np.linspace(0.55, 1.0, horizon, dtype=np.float32)[:, None, None]
        image[:horizon] = (top * rows).astype(np.uint8)
        image[horizon:] = (70, 110, 80)  # grass
        half = self._road_half_width()
        far, near = 200.0, 1.0
        corners = [self._project(-half, 0, near), self._project(half, 0, near), self._project(half, 0, far),
                   self._project(-half, 0, far)]
        cv2.fillPoly(image, [np.array(corners, np.int32)], (85, 85, 90))
        dash, gap = 3.0, 6.0
        offset = self.travelled % (dash + gap)
        for lane in range(1, cfg.lanes):
            x = -half + lane * cfg.lane_width
            z = 2.0 - offset
            while z < 80:
                if z + dash > 1.5:
                    self._road_quad(image, x, max(z, 1.5), z + dash, 0.15, (235, 235, 235))
                z += dash + gap
        for edge in (-half, half):
            self._road_quad(image, edge, 1.5, 150, 0.2, (245, 245, 245))
        image[:] = np.clip(image.astype(np.float32) * brightness, 0, 255).astype(np.uint8)

    def _road_quad(self, image: np.ndarray, x: float, z0: float, z1: float, width: float, colour) -> None:
        points = [self._project(x - width / 2, 0, z0), self._project(x + width / 2, 0, z0),
                  self._project(x + width / 2, 0, z1), self._project(x - width / 2, 0, z1)]
        cv2.fillPoly(image, [np.array(points, np.int32)], colour)

    def _draw_object(self, canvas: np.ndarray, ids: np.ndarray, label: int, obj: SceneObject, shade: float) -> bool:
        width, height, _ = _SIZES[obj.class_id]
        left, bottom = self._project(obj.x - width / 2, 0, obj.z)
        right, top = self._project(obj.x + width / 2, height, obj.z)
        if obj.class_id == TRAFFIC_LIGHT:
            pole_top = self._project(obj.x, 4.5, obj.z)[1]
            top, bottom = pole_top, pole_top + (bottom - top)
        if right < 0 or left >= canvas.shape[1] or bottom < 0 or top >= canvas.shape[0] or right - left < 2:
            return False
        colour = tuple(int(c * shade) for c in obj.colour)

        def rect(x0, y0, x1, y1, c):
            p0, p1 = (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1)))
            cv2.rectangle(canvas, p0, p1, c, -1)
            cv2.rectangle(ids, p0, p1, label, -1)

        def ellipse(cx, cy, rx, ry, c):
            centre, axes = (int(round(cx)), int(round(cy))), (max(1, int(round(rx))), max(1, int(round(ry))))
            cv2.ellipse(canvas, centre, axes, 0, 0, 360, c, -1)
            cv2.ellipse(ids, centre, axes, 0, 0, 360, label, -1)

        w, h = right - left, bottom - top
        dark = tuple(int(c * 0.35) for c in colour)
        if obj.class_id in (CAR, TRUCK, BUS):
            wheel = h * 0.18
            rect(left, top + h * (0.45 if obj.class_id == CAR else 0.05), right, bottom - wheel * 0.6, colour)
            if obj.class_id == CAR:  # cabin and rear window
                rect(left + w * 0.12, top, right - w * 0.12, top + h * 0.5, colour)
                rect(left + w * 0.2, top + h * 0.08, right - w * 0.2, top + h * 0.42, (60, 50, 40))
            elif obj.class_id == BUS:
                for k in range(3):
                    rect(left + w * (0.08 + 0.3 * k), top + h * 0.15, left + w * (0.3 + 0.3 * k), top + h * 0.45, (70, 60, 50))
            else:
                rect(left + w * 0.05, top + h * 0.1, right - w * 0.05, top + h * 0.15, dark)
            rect(left + w * 0.05, bottom - wheel * 1.6, left + w * 0.2, bottom - wheel * 1.2, (30, 30, 200))
            rect(right - w * 0.2, bottom - wheel * 1.6, right - w * 0.05, bottom - wheel * 1.2, (30, 30, 200))
            ellipse(left + w * 0.2, bottom - wheel * 0.6, w * 0.1, wheel * 0.6, (20, 20, 20))
            ellipse(right - w * 0.2, bottom - wheel * 0.6, w * 0.1, wheel * 0.6, (20, 20, 20))
        elif obj.class_id == PERSON:
            ellipse(left + w / 2, top + h * 0.08, w * 0.22, h * 0.08, (150, 170, 205))
            rect(left + w * 0.1, top + h * 0.16, right - w * 0.1, top + h * 0.55, colour)
            rect(left + w * 0.2, top + h * 0.55, left + w * 0.45, bottom, dark)
            rect(right - w * 0.45, top + h * 0.55, right - w * 0.2, bottom, dark)
        elif obj.class_id == BICYCLE:
            radius = h * 0.22
            for cx in (left + w * 0.25, right - w * 0.25):
                ellipse(cx, bottom - radius, max(1.0, w * 0.2), radius, (25, 25, 25))
                ellipse(cx, bottom - radius, max(1.0, w * 0.12), radius * 0.6, (120, 120, 120))
            rect(left + w * 0.25, bottom - radius * 1.6, right - w * 0.25, bottom - radius * 1.2, colour)
            rect(left + w * 0.4, top, left + w * 0.6, bottom - radius * 1.6, colour)
            ellipse(left + w * 0.5, top + h * 0.1, w * 0.18, h * 0.09, (150, 170, 205))
        else:  # traffic light: housing with three lamps, one lit, on a pole
            pole_x = left + w / 2
            cv2.line(canvas, (int(pole_x), int(bottom)), (int(pole_x), int(self._project(obj.x, 0, obj.z)[1])),
                     (60, 60, 60), max(1, int(w * 0.15)))
            rect(left, top, right, bottom, (25, 25, 25))
            lit = ((60, 60, 230), (40, 200, 230), (60, 220, 60))
            for k in range(3):
                on = k == obj.light_state
                ellipse(left + w / 2, top + h * (0.18 + 0.32 * k), w * 0.3, h * 0.12, lit[k] if on else (50, 50, 50))
        return True

    def next_frame(self) -> SceneFrame:
        cfg = self.config
        dt = 1.0 / cfg.fps
        if self.index:
            self._advance(dt)
        stamp = self.index * dt
        brightness = 0.75 + 0.25 * math.sin(self.light_phase + 0.05 * self.index)
        image = np.zeros((cfg.height, cfg.width, 3), np.uint8)
        self._draw_background(image, 1.0)
        ids = np.zeros((cfg.height, cfg.width), np.int32)
        drawn: list[tuple[int, SceneObject, int]] = []
        for k, obj in enumerate(sorted(self.objects, key=lambda o: -o.z)):  # far to near
            silhouette = np.zeros_like(ids)
            if not self._draw_object(np.zeros_like(image), silhouette, 1, obj, 1.0):
                continue
            full = int(silhouette.sum())
            self._draw_object(image, ids, k + 1, obj, float(self.rng.uniform(0.8, 1.1)))
            drawn.append((k + 1, obj, full))
        boxes, classes, visible = [], [], []
        for label, obj, full in drawn:
            ys, xs = np.nonzero(ids == label)
            if full == 0 or xs.size < cfg.min_visible_fraction * full:
                continue
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            if min(x1 - x0, y1 - y0) < cfg.min_box_pixels:
                continue
            boxes.append((x0, y0, x1, y1))
            classes.append(obj.class_id)
            visible.append(obj)
        shaded = image.astype(np.float32) * brightness
        if cfg.noise_sigma > 0:
            shaded += self.rng.normal(0, cfg.noise_sigma, shaded.shape).astype(np.float32)
        image = np.clip(shaded, 0, 255).astype(np.uint8)
        frame = SceneFrame(self.index, stamp, image, np.array(boxes, np.float32).reshape(-1, 4),
                           np.array(classes, np.int64), visible)
        self.index += 1
        return frame
