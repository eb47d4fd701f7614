"""Training augmentation: mosaic, random scale and translation, horizontal flip, HSV jitter,
letterbox. Boxes follow every geometric step. Deterministic for a given random generator.

Images stay BGR uint8 0..255, the input convention of the YOLOX models here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import letterbox_geometry


@dataclass(frozen=True)
class AugmentConfig:
    input_size: int | tuple[int, int] = 416
    """The network input: a square side, or (height, width) for a camera-shaped input."""
    mosaic_probability: float = 0.5
    flip_probability: float = 0.5
    scale_range: tuple[float, float] = (0.5, 1.5)
    translate: float = 0.1
    hsv_gains: tuple[float, float, float] = (0.015, 0.7, 0.4)
    """Maximum relative change of hue, saturation and value."""
    pad_value: int = 114
    min_box_size: float = 2.0

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        if isinstance(self.input_size, int):
            return self.input_size, self.input_size
        height, width = self.input_size
        return int(height), int(width)


@dataclass
class Sample:
    image: np.ndarray  # HxWx3 BGR uint8
    boxes_xyxy: np.ndarray  # (N, 4) pixels
    class_ids: np.ndarray  # (N,); -1: a box whose class its set does not tell apart (class-agnostic labels)
    labelled: bool = True
    """False for distillation-only images: no boxes does not mean no objects."""
    exhaustive: bool = True
    """Every object of every class the student predicts is boxed, so a cell without a box is
    background. False for a set that labels only some classes: its other objects are not errors."""

    @classmethod
    def unlabelled(cls, image: np.ndarray) -> "Sample":
        return cls(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), labelled=False)


def letterbox(sample: Sample, hw: tuple[int, int], pad_value: int = 114) -> Sample:
    """Resize keeping the aspect ratio into the top-left of an ``hw`` (height, width) canvas, as the
    runtime does."""
    out_height, out_width = hw
    height, width = sample.image.shape[:2]
    geometry = letterbox_geometry(width, height, InputSpec(width=out_width, height=out_height, pad_value=pad_value))
    canvas = np.full((out_height, out_width, 3), pad_value, np.uint8)
    canvas[: geometry.resized_height, : geometry.resized_width] = cv2.resize(
        sample.image, (geometry.resized_width, geometry.resized_height), interpolation=cv2.INTER_LINEAR
    )
    return replace(sample, image=canvas, boxes_xyxy=sample.boxes_xyxy * geometry.scale)


def mosaic(samples: list[Sample], hw: tuple[int, int], rng: np.random.Generator, pad_value: int = 114) -> Sample:
    """Four images, each letterboxed to ``hw``, meeting at a random center of a ``2 hw`` canvas (the
    affine step crops it back to ``hw``)."""
    size_y, size_x = hw
    canvas = np.full((2 * size_y, 2 * size_x, 3), pad_value, np.uint8)
    center_x = int(rng.uniform(0.5 * size_x, 1.5 * size_x))
    center_y = int(rng.uniform(0.5 * size_y, 1.5 * size_y))
    boxes, classes = [], []
    for quadrant, sample in enumerate(samples[:4]):
        height, width = sample.image.shape[:2]
        geometry = letterbox_geometry(width, height, InputSpec(width=size_x, height=size_y))
        w, h = geometry.resized_width, geometry.resized_height
        image = cv2.resize(sample.image, (w, h), interpolation=cv2.INTER_LINEAR)
        left, top = quadrant % 2 == 0, quadrant < 2  # which side of the center the image lies on
        x1, x2 = (max(center_x - w, 0), center_x) if left else (center_x, min(center_x + w, 2 * size_x))
        y1, y2 = (max(center_y - h, 0), center_y) if top else (center_y, min(center_y + h, 2 * size_y))
        source_x = w - (x2 - x1) if left else 0  # keep the part of the image next to the center
        source_y = h - (y2 - y1) if top else 0
        canvas[y1:y2, x1:x2] = image[source_y : source_y + (y2 - y1), source_x : source_x + (x2 - x1)]
        offset = np.array([x1 - source_x, y1 - source_y] * 2, np.float32)
        boxes.append(sample.boxes_xyxy * geometry.scale + offset)
        classes.append(sample.class_ids)
    # The boxes of labelled tiles stay labels; the cells of the whole canvas are background only
    # where every tile boxes every object.
    labelled = any(sample.labelled for sample in samples[:4])
    exhaustive = all(sample.labelled and sample.exhaustive for sample in samples[:4])
    merged = Sample(canvas, np.concatenate(boxes).astype(np.float32), np.concatenate(classes), labelled, exhaustive)
    return _clip(merged, 2 * size_x, 2 * size_y)


def random_affine(sample: Sample, hw: tuple[int, int], config: AugmentConfig, rng: np.random.Generator,
                  source_hw: tuple[int, int] | None = None) -> Sample:
    """Random scale about the source center and random translation, into an ``hw`` canvas."""
    height, width = hw
    source_height, source_width = source_hw or hw
    scale = rng.uniform(*config.scale_range)
    shift_x, shift_y = rng.uniform(-config.translate, config.translate, 2) * np.array([width, height])
    matrix = np.array([[scale, 0, 0], [0, scale, 0]], np.float64)
    # scale about the source center, place that center at the output center plus the shift
    matrix[:, 2] = [width / 2 + shift_x - scale * source_width / 2, height / 2 + shift_y - scale * source_height / 2]
    image = cv2.warpAffine(sample.image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                           borderValue=(config.pad_value,) * 3)
    boxes = sample.boxes_xyxy * scale + np.tile(matrix[:, 2], 2)
    return _clip(replace(sample, image=image, boxes_xyxy=boxes.astype(np.float32)), width, height,
                 config.min_box_size)


def hsv_jitter(image: np.ndarray, gains: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    factors = rng.uniform(-1, 1, 3) * np.asarray(gains) + 1
    hue, saturation, value = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    lut = np.arange(256, dtype=np.float64)
    hue = cv2.LUT(hue, ((lut * factors[0]) % 180).astype(np.uint8))
    saturation = cv2.LUT(saturation, np.clip(lut * factors[1], 0, 255).astype(np.uint8))
    value = cv2.LUT(value, np.clip(lut * factors[2], 0, 255).astype(np.uint8))
    return cv2.cvtColor(cv2.merge([hue, saturation, value]), cv2.COLOR_HSV2BGR)


def horizontal_flip(sample: Sample) -> Sample:
    width = sample.image.shape[1]
    boxes = sample.boxes_xyxy.copy()
    boxes[:, [0, 2]] = width - sample.boxes_xyxy[:, [2, 0]]
    return replace(sample, image=np.ascontiguousarray(sample.image[:, ::-1]), boxes_xyxy=boxes)


def augment(samples: list[Sample], config: AugmentConfig, rng: np.random.Generator) -> Sample:
    """One training sample from ``samples[0]`` (and, for mosaic, three more)."""
    hw = config.input_hw
    if len(samples) >= 4 and rng.random() < config.mosaic_probability:
        result = random_affine(mosaic(samples, hw, rng, config.pad_value), hw, config, rng,
                               source_hw=(2 * hw[0], 2 * hw[1]))
    else:
        result = random_affine(letterbox(samples[0], hw, config.pad_value), hw, config, rng)
    if rng.random() < config.flip_probability:
        result = horizontal_flip(result)
    if any(config.hsv_gains):
        result = replace(result, image=hsv_jitter(result.image, config.hsv_gains, rng))
    return result


def _clip(sample: Sample, width: int, height: int, min_size: float = 2.0) -> Sample:
    boxes = sample.boxes_xyxy.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return replace(sample, boxes_xyxy=boxes[keep], class_ids=sample.class_ids[keep])
