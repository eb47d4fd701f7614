"""Image -> input tensor: letterbox resize, channel order, normalization (all vectorized)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from prune_perception.errors import ImageFormatError
from prune_perception.runtime.metadata import InputSpec

# cv2 conversion from each supported pixel format to the model's channel order (None: as is).
_CONVERSIONS: dict[tuple[str, str], int | None] = {
    ("BGR", "BGR"): None,
    ("BGR", "RGB"): cv2.COLOR_BGR2RGB,
    ("RGB", "BGR"): cv2.COLOR_RGB2BGR,
    ("RGB", "RGB"): None,
    ("BGRA", "BGR"): cv2.COLOR_BGRA2BGR,
    ("BGRA", "RGB"): cv2.COLOR_BGRA2RGB,
    ("RGBA", "BGR"): cv2.COLOR_RGBA2BGR,
    ("RGBA", "RGB"): cv2.COLOR_RGBA2RGB,
    ("GRAY", "BGR"): cv2.COLOR_GRAY2BGR,
    ("GRAY", "RGB"): cv2.COLOR_GRAY2RGB,
}
_CHANNELS_PER_FORMAT = {"BGR": 3, "RGB": 3, "BGRA": 4, "RGBA": 4, "GRAY": 1}
PIXEL_FORMATS = tuple(_CHANNELS_PER_FORMAT)


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where an image of ``image_width`` x ``image_height`` landed inside the model input."""

    image_width: int
    image_height: int
    scale: float
    pad_x: int
    pad_y: int
    resized_width: int
    resized_height: int

    def boxes_to_image(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map boxes from model-input pixels back to original-image pixels, clipped to the image."""
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float32)
        boxes = (boxes_xyxy - offset) / np.float32(self.scale)
        np.clip(boxes[:, 0::2], 0, self.image_width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, self.image_height, out=boxes[:, 1::2])
        return boxes


def letterbox_geometry(image_width: int, image_height: int, spec: InputSpec) -> LetterboxGeometry:
    scale = min(spec.width / image_width, spec.height / image_height)
    resized_width = max(1, min(spec.width, int(round(image_width * scale))))
    resized_height = max(1, min(spec.height, int(round(image_height * scale))))
    if spec.letterbox_align == "center":
        pad_x = (spec.width - resized_width) // 2
        pad_y = (spec.height - resized_height) // 2
    else:
        pad_x = pad_y = 0
    return LetterboxGeometry(image_width, image_height, scale, pad_x, pad_y, resized_width, resized_height)


class Preprocessor:
    """Turns images into the model's input tensor as its :class:`InputSpec` says.

    The padded canvas is reused across frames of the same size, so the pad is only filled when
    the image size changes. The returned tensor is a new array each call.

    Example:
        >>> pre = Preprocessor(InputSpec(width=416, height=416))
        >>> tensor, geometry = pre(np.zeros((540, 960, 3), np.uint8), "BGR")
        >>> tensor.shape
        (1, 3, 416, 416)
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self._canvas = np.full((spec.height, spec.width, 3), spec.pad_value, dtype=np.uint8)
        self._geometry: LetterboxGeometry | None = None
        mean = np.asarray(spec.mean, dtype=np.float32)
        std = np.asarray(spec.std, dtype=np.float32)
        self._identity = spec.pixel_scale == 1.0 and not mean.any() and bool(np.all(std == 1.0))
        # (x * pixel_scale - mean) / std == x * gain + bias
        self._gain = (np.float32(spec.pixel_scale) / std).astype(np.float32)
        self._bias = (-mean / std).astype(np.float32)

    def __call__(self, image: np.ndarray, pixel_format: str = "BGR") -> tuple[np.ndarray, LetterboxGeometry]:
        image = _validated_image(image, pixel_format)
        height, width = image.shape[:2]
        geometry = self._geometry
        if geometry is None or (geometry.image_width, geometry.image_height) != (width, height):
            geometry = letterbox_geometry(width, height, self.spec)
            self._canvas[:] = self.spec.pad_value
            self._geometry = geometry

        size = (geometry.resized_width, geometry.resized_height)
        region = self._canvas[
            geometry.pad_y : geometry.pad_y + geometry.resized_height,
            geometry.pad_x : geometry.pad_x + geometry.resized_width,
        ]
        conversion = _CONVERSIONS[(pixel_format, self.spec.channel_order)]
        if conversion is None and region.flags.c_contiguous:
            cv2.resize(image, size, dst=region, interpolation=cv2.INTER_LINEAR)  # straight into the canvas
        else:
            # Resize first: converting the smaller image is cheaper.
            resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            region[...] = resized if conversion is None else cv2.cvtColor(resized, conversion)

        if self.spec.layout == "NCHW":
            tensor = self._canvas.transpose(2, 0, 1)[None].astype(np.float32)
            if not self._identity:
                tensor *= self._gain[None, :, None, None]
                tensor += self._bias[None, :, None, None]
        else:
            tensor = self._canvas[None].astype(np.float32)
            if not self._identity:
                tensor *= self._gain
                tensor += self._bias
        return tensor, geometry


def _validated_image(image: np.ndarray, pixel_format: str) -> np.ndarray:
    if pixel_format not in _CHANNELS_PER_FORMAT:
        raise ImageFormatError(f"unsupported pixel format {pixel_format!r}; expected one of {list(PIXEL_FORMATS)}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageFormatError("image must be a uint8 numpy array")
    expected_channels = _CHANNELS_PER_FORMAT[pixel_format]
    if image.ndim == 3 and image.shape[2] == 1 and expected_channels == 1:
        image = image[:, :, 0]
    channels = 1 if image.ndim == 2 else (image.shape[2] if image.ndim == 3 else -1)
    if channels != expected_channels:
        raise ImageFormatError(
            f"{pixel_format} image needs {expected_channels} channel(s), got array of shape {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageFormatError(f"image is empty (shape {image.shape})")
    return image
