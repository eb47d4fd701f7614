"""The Detector on the real YOLOX-Nano with real images, checked against labels."""


import cv2
import numpy as np
import pytest

from prune_perception.data.yolo_labels import label_path_for, read_yolo_labels
from prune_perception.errors import BackendUnavailableError, ModelLoadError
from prune_perception.eval.matching import MatchResult, match_detections
from prune_perception.runtime.detector import Detector, DetectorConfig

CAR, TRUCK = 2, 7


def test_finds_labelled_objects_in_coco_images(yolox_detector, coco128_dir):
    """IoU >= 0.5, same class, greedy by score, on the first 32 labelled COCO images.

    Measured here: precision 0.70, recall 0.39 at score 0.3 (recall counts every small and
    occluded COCO box; 0.41 over all 128 images, in line with YOLOX-Nano's AP).
    """
    total = MatchResult(0, 0, 0)
    for path in sorted((coco128_dir / "images").glob("*.jpg"))[:32]:
        image = cv2.imread(str(path))
        gt_boxes, gt_labels = read_yolo_labels(label_path_for(path), image.shape[1], image.shape[0])
        detections = yolox_detector.detect(image).detections
        total = total + match_detections(
            detections.boxes_xyxy, detections.scores, detections.class_ids, gt_boxes, gt_labels
        )
    assert total.true_positives + total.false_negatives > 150  # enough boxes to mean something
    assert total.precision >= 0.6, total
    assert total.recall >= 0.3, total


def test_finds_cars_in_dashcam_frames(yolox_detector, dashcam_frames):
    frames_with_car, boxes = 0, []
    for frame in dashcam_frames[::3]:
        detections = yolox_detector.detect(frame).detections
        vehicles = [d for d in detections if d.class_id in (CAR, TRUCK) and d.score >= 0.4]
        frames_with_car += bool(vehicles)
        boxes += [d.box_xyxy for d in vehicles]
    assert frames_with_car >= 0.9 * len(dashcam_frames[::3])
    boxes = np.asarray(boxes)
    # Vehicles on this highway are below the horizon (y > 270 of 540) and inside the frame.
    assert np.all(boxes[:, [1, 3]].mean(axis=1) > 250)
    assert np.all((boxes >= 0) & (boxes[:, [0, 2]].max() <= 960))


def test_timings_and_detection_fields(yolox_detector, dashcam_frames):
    result = yolox_detector.detect(dashcam_frames[0])
    timings = result.timings
    assert timings.inference_ms > 0 and timings.preprocess_ms > 0 and timings.postprocess_ms > 0
    detections = result.detections
    assert len(detections) > 0
    assert np.all(np.diff(detections.scores) <= 0)  # sorted by score
    first = next(iter(detections))
    assert first.class_name == yolox_detector.metadata.class_names[first.class_index]


def test_all_pixel_formats_give_the_same_detections(yolox_detector, dashcam_frames):
    frame = dashcam_frames[10]
    reference = yolox_detector.detect(frame).detections
    for image, pixel_format in [
        (cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), "RGB"),
        (cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA), "BGRA"),
        (cv2.cvtColor(frame, cv2.COLOR_BGR2RGBA), "RGBA"),
    ]:
        detections = yolox_detector.detect(image, pixel_format).detections
        np.testing.assert_allclose(detections.boxes_xyxy, reference.boxes_xyxy, atol=1e-3)
    gray = yolox_detector.detect(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), "GRAY").detections
    assert len(gray) > 0


def test_thresholds_change_between_frames(yolox_nano_path, dashcam_frames):
    detector = Detector(yolox_nano_path, device="cpu", config=DetectorConfig(score_threshold=0.1))
    many = len(detector.detect(dashcam_frames[0]).detections)
    detector.update_config(score_threshold=0.6, max_detections=1)
    few = len(detector.detect(dashcam_frames[0]).detections)
    assert many > few and few <= 1
    with pytest.raises(ValueError, match="score_threshold"):
        detector.update_config(score_threshold=1.5)


def test_missing_and_corrupt_models_give_clear_errors(tmp_path, yolox_nano_path):
    with pytest.raises(ModelLoadError, match="model file not found"):
        Detector(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(ModelLoadError, match="cannot load ONNX model"):
        Detector(corrupt)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(yolox_nano_path.read_bytes()[:100_000])
    with pytest.raises(ModelLoadError):
        Detector(truncated)
    with pytest.raises(BackendUnavailableError, match="suffix"):
        Detector(tmp_path / "model.bin")
    with pytest.raises(BackendUnavailableError, match="device"):
        Detector(yolox_nano_path, device="gpu0")


def test_cuda_request_without_cuda_is_refused(yolox_nano_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        Detector(yolox_nano_path, device="cuda")
    assert Detector(yolox_nano_path, device="auto").device == "cpu"


def test_cpu_session_keeps_silu_in_the_blocked_layout(yolox_nano_path, yolox_detector, dashcam_frames, tmp_path):
    """The backend disables onnxruntime's QuickGelu fusion on the CPU: the outputs do not change,
    and the optimized graph keeps SiLU as Sigmoid and Mul (which the NCHWc layout handles) where
    onnxruntime's defaults turn every SiLU into a QuickGelu node between two layout reorders."""
    import onnx
    import onnxruntime as ort

    from prune_perception.runtime.backends.onnxruntime_backend import CPU_DISABLED_OPTIMIZERS, OnnxRuntimeBackend
    from prune_perception.runtime.preprocess import Preprocessor

    backend = OnnxRuntimeBackend(yolox_nano_path, device="cpu")
    tensor, _ = Preprocessor(yolox_detector.metadata.input)(dashcam_frames[0])
    default = ort.InferenceSession(str(yolox_nano_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(backend.infer(tensor), default.run(None, {default.get_inputs()[0].name: tensor})[0],
                               rtol=0, atol=1e-4)

    def optimized_op_types(disabled: list[str]) -> set[str]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"optimized_{len(disabled)}.onnx")
        ort.InferenceSession(str(yolox_nano_path), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=disabled)
        return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}

    assert "QuickGelu" in optimized_op_types([])
    assert "QuickGelu" not in optimized_op_types(list(CPU_DISABLED_OPTIMIZERS))


def test_a_batch_of_cameras_of_different_sizes_matches_one_call_each(batched_yolox_path, yolox_detector, dashcam_frames):
    """The dynamic-batch export runs three cameras in one call, each letterboxed on its own, with
    the detections of one call per image; the shared fixed-batch file falls back to one call each."""
    batched = Detector(batched_yolox_path, device="cpu")
    assert batched.max_batch is None and yolox_detector.max_batch == 1
    small = cv2.resize(dashcam_frames[10], (640, 360))
    frames = [(dashcam_frames[0], "BGR"), (small, "BGR"), (dashcam_frames[20][:, :, ::-1].copy(), "RGB")]
    together = batched.detect_batch(frames)
    assert [r.batch_size for r in together] == [3, 3, 3]
    assert len({r.timings.inference_ms for r in together}) == 1  # one call, its time shared
    for (image, pixel_format), result in zip(frames, together):
        alone = batched.detect(image, pixel_format).detections
        np.testing.assert_allclose(result.detections.boxes_xyxy, alone.boxes_xyxy, atol=0.05)
        reference = yolox_detector.detect(image, pixel_format).detections  # the file as given, same weights
        assert result.detections.class_ids.tolist() == reference.class_ids.tolist()
        np.testing.assert_allclose(result.detections.boxes_xyxy, reference.boxes_xyxy, atol=0.5)
    assert together[1].detections.boxes_xyxy[:, 2].max() <= 640 and together[1].detections.boxes_xyxy[:, 3].max() <= 360
    one_by_one = yolox_detector.detect_batch(frames)
    assert [r.batch_size for r in one_by_one] == [1, 1, 1]
