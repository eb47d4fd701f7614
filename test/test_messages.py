"""Message conversion without a running ROS graph (message classes only)."""

import array

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from prune_perception.data.image_codec import compressed_image_to_array, raw_image_to_array
from prune_perception.errors import ImageFormatError
from prune_perception.ros.detection_messages import detections_to_msg, msg_to_arrays
from prune_perception.ros.image_conversion import array_to_compressed_msg, array_to_image_msg
from prune_perception.runtime.postprocess import Detections


def header():
    h = Header(frame_id="front_camera")
    h.stamp.sec, h.stamp.nanosec = 1700000000, 123456789
    return h


def test_every_supported_encoding_round_trips():
    bgr = np.random.default_rng(0).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    images = {
        "bgr8": (bgr, "BGR"),
        "rgb8": (bgr[:, :, ::-1], "RGB"),
        "mono8": (bgr[:, :, 0], "GRAY"),
        "bgra8": (np.dstack([bgr, bgr[:, :, :1]]), "BGRA"),
        "rgba8": (np.dstack([bgr[:, :, ::-1], bgr[:, :, :1]]), "RGBA"),
    }
    for encoding, (image, pixel_format) in images.items():
        msg = array_to_image_msg(np.ascontiguousarray(image), encoding, header())
        view, fmt = raw_image_to_array(msg)
        assert fmt == pixel_format
        np.testing.assert_array_equal(view, image)


def test_row_padding_in_step_is_skipped():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    msg = Image(height=4, width=5, encoding="bgr8", step=5 * 3 + 4)
    padded = np.zeros((4, 19), np.uint8)
    padded[:, :15] = image.reshape(4, 15)
    msg.data = array.array("B", padded.tobytes())
    view, _ = raw_image_to_array(msg)
    np.testing.assert_array_equal(view, image)


@pytest.mark.parametrize("build, message", [
    (lambda: Image(height=4, width=4, encoding="32FC1", step=16, data=bytes(64)), "unsupported encoding '32FC1'"),
    (lambda: Image(height=4, width=4, encoding="bgr8", step=12, data=bytes(40)), "truncated image: 40 bytes"),
    (lambda: Image(height=0, width=4, encoding="bgr8", step=12), "zero-size image"),
    (lambda: Image(height=4, width=4, encoding="bgr8", step=8, data=bytes(32)), "step 8 is shorter"),
])
def test_bad_raw_images_raise_clear_errors(build, message):
    with pytest.raises(ImageFormatError, match=message):
        raw_image_to_array(build())


def test_compressed_jpeg_and_png_decode():
    image = np.zeros((32, 48, 3), np.uint8)
    cv2.rectangle(image, (5, 5), (30, 20), (0, 0, 255), -1)
    png = array_to_compressed_msg(image, header(), "png")
    decoded, fmt = compressed_image_to_array(png)
    assert fmt == "BGR"
    np.testing.assert_array_equal(decoded, image)
    jpeg = array_to_compressed_msg(image, header(), "jpeg", quality=95)
    decoded, _ = compressed_image_to_array(jpeg)
    assert decoded.shape == image.shape
    np.testing.assert_allclose(decoded[12, 16], [0, 0, 255], atol=25)  # inside the red square
    np.testing.assert_allclose(decoded[28, 40], [0, 0, 0], atol=25)  # outside


def test_corrupt_and_empty_compressed_images_raise():
    good = array_to_compressed_msg(np.zeros((16, 16, 3), np.uint8), header())
    corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0" + bytes(range(200)))
    with pytest.raises(ImageFormatError, match="cannot decode jpeg image"):
        compressed_image_to_array(corrupt)
    with pytest.raises(ImageFormatError, match="no data"):
        compressed_image_to_array(CompressedImage(format="jpeg"))
    with pytest.raises(ImageFormatError, match="unsupported compressed format"):
        compressed_image_to_array(CompressedImage(format="h264", data=bytes(good.data)))


def test_detections_to_msg_fields_and_round_trip():
    detections = Detections(
        boxes_xyxy=np.array([[10, 20, 50, 80], [100, 100, 110, 130]], np.float32),
        scores=np.array([0.9, 0.5], np.float32),
        class_ids=np.array([2, 0]),
        class_names=("person", "bicycle", "car"),
    )
    msg = detections_to_msg(detections, header(), "name")
    assert msg.header == header() and len(msg.detections) == 2
    first = msg.detections[0]
    assert first.header == header()
    assert (first.bbox.center.position.x, first.bbox.center.position.y) == (30.0, 50.0)
    assert (first.bbox.size_x, first.bbox.size_y) == (40.0, 60.0)
    assert first.results[0].hypothesis.class_id == "car"
    assert first.results[0].hypothesis.score == pytest.approx(0.9)
    assert detections_to_msg(detections, header(), "id").detections[0].results[0].hypothesis.class_id == "2"
    boxes, scores, labels = msg_to_arrays(msg)
    np.testing.assert_allclose(boxes, detections.boxes_xyxy)
    np.testing.assert_allclose(scores, detections.scores, rtol=1e-6)
    assert labels == ["car", "person"]
    assert len(detections_to_msg(Detections.empty(("a",)), header()).detections) == 0
