"""numpy -> sensor_msgs Image / CompressedImage (no cv_bridge: it is not on PyPI).

Decoding messages into arrays, with the checks a camera driver can fail, lives in
``prune_perception.data.image_codec``, shared with the bag reader.
"""

from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from prune_perception.data.image_codec import ENCODINGS
from prune_perception.errors import ImageFormatError


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
