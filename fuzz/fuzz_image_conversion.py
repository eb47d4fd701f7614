"""Fuzz harness: sensor_msgs/Image and CompressedImage -> array, as detector_node converts every
message off the wire (random encodings, sizes, steps and data; JPEG and PNG mutated from valid
seeds). The real rclpy message classes carry the fields, so every value is one DDS could deliver."""

from __future__ import annotations

import atheris
import cv2  # noqa: F401  imported before instrumentation: only this project's code is instrumented
import numpy as np

with atheris.instrument_imports(include=["prune_perception"]):
    from prune_perception.data.image_codec import ENCODINGS, compressed_image_to_array, raw_image_to_array, to_bgr
    from prune_perception.errors import PrunePerceptionError
from sensor_msgs.msg import CompressedImage, Image

ODD_ENCODINGS = ["", "32FC1", "16UC1", "bgr16", "yuv422", "BGR8", "bgr8 ", "mono16", "bayer_rggb8"]
FORMATS = ["jpeg", "png", "jpg", "JPEG", "rgb8; jpeg compressed bgr8", "", "tiff", "png; compressedDepth"]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    try:
        if fdp.ConsumeBool():
            encodings = list(ENCODINGS) + ODD_ENCODINGS
            msg = Image(
                encoding=encodings[fdp.ConsumeIntInRange(0, len(encodings) - 1)],
                height=fdp.ConsumeIntInRange(0, 5000), width=fdp.ConsumeIntInRange(0, 5000),
                step=fdp.ConsumeIntInRange(0, 2**32 - 1) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 20000),
                is_bigendian=fdp.ConsumeIntInRange(0, 1),
                data=fdp.ConsumeBytes(fdp.remaining_bytes()),
            )
            image, pixel_format = raw_image_to_array(msg)
        else:
            msg = CompressedImage(format=FORMATS[fdp.ConsumeIntInRange(0, len(FORMATS) - 1)],
                                  data=fdp.ConsumeBytes(fdp.remaining_bytes()))
            image, pixel_format = compressed_image_to_array(msg)
        to_bgr(image, pixel_format)
    except PrunePerceptionError:
        pass


def seeds() -> list[bytes]:
    frame = np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8)
    return [b"\x01" + b"\x00" * 16 + frame.tobytes(),
            b"\x00\x00" + cv2.imencode(".jpg", frame)[1].tobytes(),
            b"\x00\x01" + cv2.imencode(".png", frame)[1].tobytes()]


if __name__ == "__main__":
    from common import fuzz_main

    fuzz_main(test_one_input, seeds)
