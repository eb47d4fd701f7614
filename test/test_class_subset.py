"""Specialization to a subset of the teacher's classes: the head, distillation targets, the
sidecar's names and ids, the ids detector_node publishes, and evaluation on the labelled classes."""

import json

import numpy as np
import pytest
import torch

from prune_perception.compress.class_subset import (
    ClassSubsetError,
    resolve_classes,
    select_teacher_classes,
    specialize_head,
)
from prune_perception.runtime.class_names import COCO_CLASSES

KEEP = ["person", "car", "truck"]


def test_resolve_classes_by_name_index_and_coco_spelling():
    subset = resolve_classes(["truck", "person", 2], COCO_CLASSES)
    assert subset.teacher_ids == (0, 2, 7) and subset.names == ("person", "car", "truck")
    assert resolve_classes(["motorcycle"], COCO_CLASSES).names == ("motorbike",)  # official COCO spelling


@pytest.mark.parametrize("requested, message", [
    (["lorry"], "unknown class 'lorry'"), ([80], "outside the teacher's 80 classes"), (["car", 2], "twice"),
    ([], "empty"), ([True], "a name or an index"),
])
def test_classes_the_teacher_lacks_are_clear_errors(requested, message):
    with pytest.raises(ClassSubsetError, match=message):
        resolve_classes(requested, COCO_CLASSES)


@pytest.fixture(scope="module")
def teacher(yolox_nano_path):
    from prune_perception.models.weights import load_onnx_weights
    from prune_perception.models.yolox import build_yolox

    return load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).eval()


def test_specialized_head_keeps_the_teachers_scores_for_its_classes(teacher):
    import copy

    subset = resolve_classes(KEEP, COCO_CLASSES)
    student = specialize_head(copy.deepcopy(teacher), subset).eval()
    assert [conv.out_channels for conv in student.head.cls_preds] == [3, 3, 3]
    images = torch.rand(1, 3, 128, 192) * 255
    with torch.no_grad():
        full, kept = teacher(images), student(images)
        levels = select_teacher_classes(teacher.logits(images), subset.teacher_ids)
    assert kept.shape[-1] == 5 + 3
    assert torch.allclose(kept[..., :5], full[..., :5]) and torch.allclose(kept[..., 5:], full[..., [5, 7, 12]])
    assert [level.shape[1] for level in levels] == [8, 8, 8]


@pytest.fixture(scope="module")
def specialized_onnx(tmp_path_factory, teacher, dashcam_frames):
    import copy

    from prune_perception.export.onnx_export import export_onnx
    from prune_perception.models.pruned_checkpoint import save_pruned_checkpoint
    from prune_perception.runtime.backends.torch_backend import load_torch_model
    from prune_perception.runtime.metadata import InputSpec
    from prune_perception.runtime.preprocess import Preprocessor

    subset = resolve_classes(KEEP, COCO_CLASSES)
    student = specialize_head(copy.deepcopy(teacher), subset)
    folder = tmp_path_factory.mktemp("specialized")
    save_pruned_checkpoint(folder / "student.pt", student, "prune_perception.models.yolox:build_yolox",
                           {"variant": "yolox_nano", "num_classes": 80})
    reloaded = load_torch_model(folder / "student.pt")  # the checkpoint format keeps the cut head
    assert reloaded.head.cls_preds[0].out_channels == 3
    spec = InputSpec(width=416, height=256)
    export_onnx(reloaded, folder / "student.onnx", subset.names, spec,
                sample_inputs=[Preprocessor(spec)(dashcam_frames[0])[0]], class_ids=subset.teacher_ids)
    return folder / "student.onnx"


def test_sidecar_keeps_names_and_teacher_ids(specialized_onnx, dashcam_frames):
    from prune_perception.runtime.detector import Detector, DetectorConfig

    sidecar = json.loads(specialized_onnx.with_name("student.onnx.json").read_text())
    assert sidecar["class_names"] == KEEP and sidecar["class_ids"] == [0, 2, 7]
    detections = Detector(specialized_onnx, device="cpu", config=DetectorConfig(score_threshold=0.3)).detect(
        dashcam_frames[0]).detections
    assert len(detections) and set(detections.published_ids().tolist()) <= {0, 2, 7}
    assert {d.class_name for d in detections} <= set(KEEP)


def test_metadata_refuses_inconsistent_class_ids():
    from prune_perception.errors import ModelMetadataError
    from prune_perception.runtime.metadata import DecoderSpec, InputSpec, ModelMetadata

    with pytest.raises(ModelMetadataError, match="class_ids has 1 entries for 2"):
        ModelMetadata(InputSpec(width=64, height=64), DecoderSpec(), ("a", "b"), class_ids=(3,))
    with pytest.raises(ModelMetadataError, match="distinct"):
        ModelMetadata(InputSpec(width=64, height=64), DecoderSpec(), ("a", "b"), class_ids=(3, 3))


def test_evaluation_scores_only_the_classes_a_set_labels(specialized_onnx, yolox_nano_path, coco128_dir):
    from prune_perception.data.datasets import load_yolo_dataset
    from prune_perception.errors import PrunePerceptionError
    from prune_perception.eval.detector_eval import evaluate_on_dataset

    items = load_yolo_dataset(coco128_dir / "images")[:24]
    teacher = evaluate_on_dataset(yolox_nano_path, items, progress=False, classes=[0, 2, 7])
    student = evaluate_on_dataset(specialized_onnx, items, progress=False, classes=[0, 2, 7])
    assert set(teacher.per_class_ap) <= set(KEEP) and set(student.per_class_ap) <= set(KEEP)
    assert student.num_ground_truth == teacher.num_ground_truth
    assert student.ap > 0.5 * teacher.ap  # the same detector, cut to three classes, at a camera-shaped input
    with pytest.raises(PrunePerceptionError, match="predicts none of the classes"):
        evaluate_on_dataset(specialized_onnx, items, progress=False, classes=[16])  # dog


def test_node_publishes_the_teachers_ids(specialized_onnx, dashcam_path, tmp_path, rclpy_session):
    from prune_perception.ros.live_session import run_live_session

    result = run_live_session(specialized_onnx, dashcam_path, tmp_path, max_frames=8, frame_rate_hz=5.0,
                              detector_params={"class_id_format": "id", "score_threshold": 0.3})
    ids = {d.results[0].hypothesis.class_id for r in result.detections for d in r.msg.detections if d.results}
    assert result.detections and ids and ids <= {"0", "2", "7"}
    assert "2" in ids  # cars on the dashcam clip keep COCO's car id, not their index 1 in the student


def test_compress_refuses_a_set_whose_classes_are_not_kept(tmp_path, yolox_nano_path, coco128_dir):
    import subprocess
    import sys

    output = tmp_path / "run"
    base = [sys.executable, "-m", "prune_perception.cli.main", "compress", "--no-progress", "--set",
            f"output_dir={output}", "--set", f"teacher.onnx={yolox_nano_path}"]
    sets = f"data.sets=[{{name: coco, path: {coco128_dir / 'images'}, classes: [person, dog]}}]"
    result = subprocess.run(base + ["--set", "classes.keep=[person, car]", "--set", "data.labelled=null", "--set", sets],
                            capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "labels dog, which classes.keep leaves out" in result.stderr
    unknown = subprocess.run(base + ["--set", "classes.keep=[person, lorry]"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "unknown class 'lorry'" in unknown.stderr
    assert "Traceback" not in result.stderr + unknown.stderr and not output.exists()


def test_relabelled_samples_use_the_students_indices():
    from prune_perception.compress.run_data import relabel_to_subset
    from prune_perception.data.augment import Sample

    subset = resolve_classes(KEEP, COCO_CLASSES)
    sample = Sample(np.zeros((8, 8, 3), np.uint8), np.array([[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]], np.float32),
                    np.array([7, 16, 0]))
    relabelled = relabel_to_subset(sample, subset)
    assert relabelled.class_ids.tolist() == [2, 0] and len(relabelled.boxes_xyxy) == 2
