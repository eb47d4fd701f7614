"""The network input shaped to the camera: the choice of HxW, the checks before any work, and a
camera-shaped export that the runtime runs on a 960x540 frame with the same boxes as the square one."""

import subprocess
import sys

import numpy as np
import pytest

from prune_perception.compress.input_shape import InputShapeError, input_for_camera, parse_size, resolve_input_shape

STRIDES = (8, 16, 32)


@pytest.mark.parametrize("camera, width, expected", [
    ((960, 540), 416, (256, 416)),    # 16:9: 234 px rounded up to a multiple of 32
    ((1280, 720), 416, (256, 416)),
    ((1920, 1080), 640, (384, 640)),  # 360 -> 384
    ((640, 480), 416, (320, 416)),    # 4:3: 312 -> 320
    ((540, 960), 256, (480, 256)),    # portrait: 455 -> 480
    ((416, 416), 416, (416, 416)),
])
def test_input_keeps_the_camera_aspect_rounded_up_to_the_largest_stride(camera, width, expected):
    shape = input_for_camera(*camera, width, max(STRIDES))
    assert shape.hw == expected
    assert shape.height >= width * camera[1] / camera[0]  # rounded up: the whole frame fits, no crop
    assert shape.height % 32 == 0 and shape.width % 32 == 0


def test_camera_input_has_less_padding_than_a_square_one():
    camera = resolve_input_shape(STRIDES, square=416, camera="960x540")
    square = input_for_camera(960, 540, 416, 32)
    assert camera.padding_fraction == pytest.approx(square.padding_fraction)
    assert camera.padding_fraction < 0.1
    assert resolve_input_shape(STRIDES, square=416).hw == (416, 416)
    assert resolve_input_shape(STRIDES, square=416, network_hw="256x416").hw == (256, 416)
    assert resolve_input_shape(STRIDES, square=416, camera="1280x720", network_width=320).hw == (192, 320)


@pytest.mark.parametrize("kwargs, message", [
    ({"network_hw": "16x416"}, "smaller than one cell of the largest stride"),
    ({"network_hw": "250x416"}, "multiple of the largest stride"),
    ({"network_hw": "32x512"}, "aspect beyond"),
    ({"camera": "960*540"}, "must look like 960x540"),
    ({"camera": "0x540"}, "must be positive"),
    ({"camera": "4000x100"}, "aspect of 40.0:1"),
    ({"camera": "960x540", "network_width": 400}, "multiple of the largest stride"),
    ({"camera": "960x540", "network_hw": "256x416"}, "not several"),
])
def test_bad_shapes_are_clear_errors(kwargs, message):
    with pytest.raises(InputShapeError, match=message):
        resolve_input_shape(STRIDES, square=416, **kwargs)


def test_parse_size_accepts_lists():
    assert parse_size([960, 540], "camera") == (960, 540)
    with pytest.raises(InputShapeError):
        parse_size([960], "camera")


def test_camera_resolution_is_read_from_a_bag(tmp_path):
    from prune_perception.bags.video_to_bag import video_to_bag
    from prune_perception.sim.scenes import SceneConfig

    bag = tmp_path / "bag"
    video_to_bag(None, bag, synthetic_frames=2, scene=SceneConfig(width=640, height=384), progress=False)
    shape = resolve_input_shape(STRIDES, square=416, camera_bag=str(bag))
    assert (shape.camera_width, shape.camera_height) == (640, 384) and shape.hw == (256, 416)
    assert "read from" in shape.source


def test_compress_refuses_a_bad_shape_before_any_work(tmp_path, yolox_nano_path, coco128_dir):
    output = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "prune_perception.cli.main", "compress", "--no-progress", "--set", f"output_dir={output}",
         "--set", f"teacher.onnx={yolox_nano_path}", "--set", f"data.labelled={coco128_dir / 'images'}",
         "--set", "input.hw=20x416"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "smaller than one cell" in result.stderr and "Traceback" not in result.stderr
    assert not output.exists()  # nothing written


@pytest.fixture(scope="module")
def camera_exports(tmp_path_factory, yolox_nano_path, dashcam_frames):
    from prune_perception.export.onnx_export import export_onnx
    from prune_perception.models.weights import load_onnx_weights
    from prune_perception.models.yolox import build_yolox
    from prune_perception.runtime.class_names import COCO_CLASSES
    from prune_perception.runtime.metadata import InputSpec
    from prune_perception.runtime.preprocess import Preprocessor

    model = load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).eval()
    folder = tmp_path_factory.mktemp("camera")
    paths = {}
    for name, (height, width) in {"square": (416, 416), "camera": (256, 416)}.items():
        spec = InputSpec(width=width, height=height)
        samples = [Preprocessor(spec)(frame)[0] for frame in dashcam_frames[:2]]
        result = export_onnx(model, folder / f"{name}.onnx", COCO_CLASSES, spec, sample_inputs=samples)
        assert result.relative_diff < 1e-3  # parity with torch at this shape, on real frames
        paths[name] = result.path
    return paths


def test_camera_shaped_export_finds_the_same_boxes_on_a_960x540_frame(camera_exports, dashcam_frames):
    from prune_perception.eval.matching import box_iou
    from prune_perception.runtime.detector import Detector, DetectorConfig

    config = DetectorConfig(score_threshold=0.4)
    square = Detector(camera_exports["square"], device="cpu", config=config)
    camera = Detector(camera_exports["camera"], device="cpu", config=config)
    assert (camera.metadata.input.height, camera.metadata.input.width) == (256, 416)
    matched = total = 0
    for frame in dashcam_frames[::10]:
        assert frame.shape[:2] == (540, 960)
        reference = square.detect(frame).detections
        found = camera.detect(frame).detections
        assert np.all(found.boxes_xyxy[:, 2] <= 960) and np.all(found.boxes_xyxy[:, 3] <= 540)  # original pixels
        for box in reference.boxes_xyxy:
            total += 1
            matched += bool(len(found) and box_iou(box[None], found.boxes_xyxy).max() > 0.7)
    assert total >= 5 and matched / total >= 0.8
