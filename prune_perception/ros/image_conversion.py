"""sensor_msgs Image / CompressedImage <-> numpy, with the checks a camera driver can fail.

No cv_bridge (not on PyPI): raw images are viewed in place with ``np.frombuffer`` (no copy),
compressed ones are decoded with OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

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


def image_msg_to_array(msg: Image) -> tuple[np.ndarray, str]:
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


def compressed_msg_to_array(msg: CompressedImage) -> tuple[np.ndarray, str]:
    """Decode a JPEG or PNG CompressedImage to BGR.

    Raises:
        ImageFormatError: an unsupported format, empty data, or data OpenCV cannot decode.
    """
    declared = msg.format.lower()
    if declared and not any(name in declared for name in COMPRESSED_FORMATS):
        raise ImageFormatError(f"unsupported compressed format {msg.format!r}; supported: jpeg, png")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ImageFormatError("compressed image has no data")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageFormatError(f"cannot decode {msg.format or 'compressed'} image of {data.size} bytes: corrupt or truncated")
    return image, "BGR"


def array_to_image_msg(image: np.ndarray, encoding: str, header: Header) -> Image:
    """Pack a contiguous ``(H, W[, C])`` uint8 array into an Image with ``encoding``."""
    if encoding not in ENCODINGS:
        raise ImageFormatError(f"unsupported encoding {encoding!r}")
    channels = ENCODINGS[encoding][1]
    if image.dtype != np.uint8 or (image.shape[2] if image.ndim == 3 else 1) != channels:
        raise ImageFormatError(f"{encoding} needs uint8 with {channels} channel(s), got {image.dtype} {image.shape}")
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels
    msg.data = np.ascontiguousarray(image).tobytes()
    return msg


def array_to_compressed_msg(image_bgr: np.ndarray, header: Header, image_format: str = "jpeg", quality: int = 90) -> CompressedImage:
    extension, params = (".png", []) if image_format == "png" else (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])
    ok, encoded = cv2.imencode(extension, image_bgr, params)
    if not ok:
        raise ImageFormatError(f"OpenCV could not encode the image as {image_format}")
    msg = CompressedImage()
    msg.header = header
    msg.format = image_format
    msg.data = encoded.tobytes()
    return msg
