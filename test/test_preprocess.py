import numpy as np
import pytest

from prune_perception.errors import ImageFormatError
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor, letterbox_geometry


def gradient_image(height, width):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)


def test_letterbox_geometry_keeps_aspect_ratio_top_left():
    geometry = letterbox_geometry(960, 540, InputSpec(width=416, height=416))
    assert geometry.scale == pytest.approx(416 / 960)
    assert (geometry.resized_width, geometry.resized_height) == (416, 234)
    assert (geometry.pad_x, geometry.pad_y) == (0, 0)


def test_letterbox_geometry_center_pads_both_sides():
    geometry = letterbox_geometry(300, 600, InputSpec(width=320, height=320, letterbox_align="center"))
    assert (geometry.resized_width, geometry.resized_height) == (160, 320)
    assert (geometry.pad_x, geometry.pad_y) == (80, 0)


def test_tensor_layout_pad_and_pixels():
    image = gradient_image(540, 960)
    tensor, geometry = Preprocessor(InputSpec(width=416, height=416))(image, "BGR")
    assert tensor.shape == (1, 3, 416, 416) and tensor.dtype == np.float32
    assert np.all(tensor[0, :, 234:, :] == 114)  # bottom padding
    import cv2

    expected = cv2.resize(image, (416, 234), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    np.testing.assert_array_equal(tensor[0, :, :234, :].transpose(1, 2, 0), expected)


def test_channel_order_conversions_agree():
    bgr = gradient_image(120, 200)
    spec = InputSpec(width=64, height=64, channel_order="RGB")
    reference, _ = Preprocessor(spec)(bgr, "BGR")
    # The model wants RGB: channel 0 of the tensor must come from the image's red channel.
    import cv2

    red = cv2.resize(bgr[:, :, 2], (64, 38), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(reference[0, 0, :38], red)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    for image, pixel_format in [(rgb, "RGB"), (np.dstack([bgr, np.full(bgr.shape[:2], 7, np.uint8)]), "BGRA"),
                                (np.dstack([rgb, np.full(bgr.shape[:2], 7, np.uint8)]), "RGBA")]:
        tensor, _ = Preprocessor(spec)(image, pixel_format)
        np.testing.assert_array_equal(tensor, reference)


def test_gray_is_replicated_to_three_channels():
    gray = gradient_image(100, 100)[:, :, 0]
    tensor, _ = Preprocessor(InputSpec(width=50, height=50))(gray, "GRAY")
    np.testing.assert_array_equal(tensor[0, 0], tensor[0, 1])
    np.testing.assert_array_equal(tensor[0, 1], tensor[0, 2])


def test_normalization_and_nhwc():
    image = np.full((10, 10, 3), 255, np.uint8)
    spec = InputSpec(width=10, height=10, layout="NHWC", channel_order="BGR", pixel_scale=1 / 255,
                     mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    tensor, _ = Preprocessor(spec)(image, "BGR")
    assert tensor.shape == (1, 10, 10, 3)
    np.testing.assert_allclose(tensor[0, 0, 0], [(1 - 0.5) / 0.5, (1 - 0.25) / 0.25, 1.0], rtol=1e-6)


def test_canvas_reuse_refills_padding_when_size_changes():
    preprocessor = Preprocessor(InputSpec(width=64, height=64))
    preprocessor(np.full((64, 32, 3), 9, np.uint8), "BGR")  # fills the left half
    tensor, _ = preprocessor(np.full((32, 64, 3), 9, np.uint8), "BGR")  # now the top half
    assert np.all(tensor[0, :, 32:, :] == 114)


def test_boxes_back_to_image_coordinates_and_clipped():
    geometry = letterbox_geometry(960, 540, InputSpec(width=416, height=416))
    boxes = np.array([[0, 0, 208, 117], [400, 200, 500, 500]], np.float32)
    mapped = geometry.boxes_to_image(boxes)
    np.testing.assert_allclose(mapped[0], [0, 0, 480, 270], rtol=1e-5)
    assert mapped[1, 2] == 960 and mapped[1, 3] == 540


@pytest.mark.parametrize("image, pixel_format", [
    (np.zeros((10, 10, 3), np.uint8), "GRAY"),
    (np.zeros((10, 10), np.uint8), "BGR"),
    (np.zeros((0, 10, 3), np.uint8), "BGR"),
    (np.zeros((10, 10, 3), np.float32), "BGR"),
    (np.zeros((10, 10, 3), np.uint8), "YUV"),
])
def test_bad_images_raise_clear_errors(image, pixel_format):
    with pytest.raises(ImageFormatError):
        Preprocessor(InputSpec(width=32, height=32))(image, pixel_format)
