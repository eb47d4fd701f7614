"""Raw and compressed camera images -> numpy, for any message-like object (rclpy or rosbags).

Only reads ``encoding``, ``height``, ``width``, ``step``, ``data`` (raw) or ``format``, ``data``
(compressed), so ROS nodes and the ROS-free bag reader share the same checks.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from prune_perception.errors import ImageFormatError

# ROS encoding -> (pixel format understood by the Preprocessor, channels)
ENCODINGS: dict[str, tuple[str, int]] = {
    "bgr8": ("BGR", 3),
    "rgb8": ("RGB", 3),
    "mono8": ("GRAY", 1),
    "bgra8": ("BGRA", 4),
    "rgba8": ("RGBA", 4),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
MAX_DECODED_PIXELS = 1 << 26
"""Largest compressed image decoded (67 megapixels, twice 8K): a few hundred bytes of PNG or JPEG
can declare a 60000x60000 image, whose decode would take gigabytes from the node."""
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_TO_BGR = {"RGB": cv2.COLOR_RGB2BGR, "BGRA": cv2.COLOR_BGRA2BGR, "RGBA": cv2.COLOR_RGBA2BGR, "GRAY": cv2.COLOR_GRAY2BGR}


def raw_image_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """View a raw image as ``(H, W[, C])`` uint8 without copying; return it with its pixel format.

    Raises:
        ImageFormatError: unsupported encoding, zero size, a step shorter than a row, or ``data``
            shorter than ``height * step``.
    """
    if msg.encoding not in ENCODINGS:
        raise ImageFormatError(f"unsupported encoding {msg.encoding!r}; supported: {', '.join(ENCODINGS)}")
    pixel_format, channels = ENCODINGS[msg.encoding]
    height, width, step = msg.height, msg.width, msg.step
    if height == 0 or width == 0:
        raise ImageFormatError(f"zero-size image ({width}x{height})")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageFormatError(f"step {step} is shorter than a {msg.encoding} row of width {width} ({row_bytes} bytes)")
    size = len(msg.data)
    if size < height * step:
        raise ImageFormatError(
            f"truncated image: {size} bytes of data, but height*step = {height}*{step} = {height * step}"
        )
    rows = np.frombuffer(msg.data, dtype=np.uint8, count=height * step).reshape(height, step)
    if step != row_bytes:
        rows = rows[:, :row_bytes]
    image = rows.reshape(height, width) if channels == 1 else rows.reshape(height, width, channels)
    return image, pixel_format


def compressed_image_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a JPEG or PNG compressed image to BGR.

    Raises:
        ImageFormatError: an unsupported format, empty data, or data OpenCV cannot decode.
    """
    declared = msg.format.lower()
    if declared and not any(name in declared for name in COMPRESSED_FORMATS):
        raise ImageFormatError(f"unsupported compressed format {msg.format!r}; supported: jpeg, png")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ImageFormatError("compressed image has no data")
    declared_size = _declared_size(data.tobytes()[:65536])
    if declared_size is not None and declared_size[0] * declared_size[1] > MAX_DECODED_PIXELS:
        raise ImageFormatError(f"compressed image declares {declared_size[0]}x{declared_size[1]} pixels, more than the "
                               f"{MAX_DECODED_PIXELS} this decoder takes")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. a header OpenCV's own size limit refuses
        raise ImageFormatError(f"cannot decode {msg.format or 'compressed'} image of {data.size} bytes: "
                               f"{str(exc).strip().splitlines()[-1]}") from exc
    if image is None or image.size == 0:
        raise ImageFormatError(f"cannot decode {msg.format or 'compressed'} image of {data.size} bytes: corrupt or truncated")
    return image, "BGR"


def _declared_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) a PNG or JPEG header declares, read before decoding; None if not found."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24 and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 9 <= len(head):
        if head[position] != 0xFF:
            return None
        marker = head[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_SOF:
            return (int.from_bytes(head[position + 7:position + 9], "big"),
                    int.from_bytes(head[position + 5:position + 7], "big"))
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        position += 2 + int.from_bytes(head[position + 2:position + 4], "big")
    return None


def to_bgr(image: np.ndarray, pixel_format: str) -> np.ndarray:
    """A BGR version of an image in any supported pixel format (the image itself if BGR)."""
    conversion = _TO_BGR.get(pixel_format)
    return cv2.cvtColor(image, conversion) if conversion is not None else image
