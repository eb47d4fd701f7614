"""Shared fixtures. Real data comes from ../shared/data; tests that need it skip without it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PRUNE_PERCEPTION_SHARED_DATA", ROOT.parent / "shared" / "data"))
YOLOX_NANO = SHARED_DATA / "models" / "yolox_nano.onnx"
DASHCAM = SHARED_DATA / "video" / "solidWhiteRight.mp4"
COCO128 = SHARED_DATA / "coco128"

# Isolate this run's DDS traffic (other test runs or ROS systems on the machine) and make every
# process, including the node processes the tests start, use the large-image FastDDS profile.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
from prune_perception.ros.node_main import apply_fastdds_large_image_profile  # noqa: E402

apply_fastdds_large_image_profile()


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (expected ../shared/data beside the repository)")
    return path


@pytest.fixture(scope="session")
def yolox_nano_path() -> Path:
    return _require(YOLOX_NANO)


@pytest.fixture(scope="session")
def dashcam_path() -> Path:
    return _require(DASHCAM)


@pytest.fixture(scope="session")
def coco128_dir() -> Path:
    return _require(COCO128)


@pytest.fixture(scope="session")
def dashcam_frames(dashcam_path):
    from prune_perception.data.frame_source import iter_frames

    return list(iter_frames(dashcam_path, max_frames=60))


@pytest.fixture(scope="session")
def yolox_detector(yolox_nano_path):
    from prune_perception.runtime.detector import Detector

    return Detector(yolox_nano_path, device="cpu")


@pytest.fixture(scope="session")
def rclpy_session():
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture(scope="session")
def batched_yolox_path(yolox_nano_path, tmp_path_factory) -> Path:
    """The shared YOLOX-Nano exported by our exporter with a dynamic batch axis."""
    from prune_perception.export.onnx_export import export_onnx
    from prune_perception.models.weights import load_onnx_weights
    from prune_perception.models.yolox import build_yolox
    from prune_perception.runtime.class_names import COCO_CLASSES
    from prune_perception.runtime.metadata import InputSpec

    model = load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).eval()
    path = tmp_path_factory.mktemp("batched") / "yolox_nano_batched.onnx"
    export_onnx(model, path, COCO_CLASSES, InputSpec(width=416, height=416), dynamic_batch=True)
    return path


@pytest.fixture(scope="session")
def good_frame(dashcam_path):
    """The first frame of the dashcam clip (960x540 BGR)."""
    import cv2

    capture = cv2.VideoCapture(str(dashcam_path))
    ok, frame = capture.read()
    capture.release()
    assert ok
    return frame
