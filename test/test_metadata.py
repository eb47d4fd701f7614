import json
import shutil

import pytest

from prune_perception.errors import ModelMetadataError
from prune_perception.runtime.class_names import COCO_CLASSES
from prune_perception.runtime.metadata import (
    DecoderSpec,
    InputSpec,
    ModelMetadata,
    load_sidecar,
    sidecar_path,
    write_sidecar,
)


def sample_metadata():
    return ModelMetadata(
        input=InputSpec(width=320, height=256, name="images", channel_order="RGB", pixel_scale=1 / 255,
                        mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5), pad_value=0, letterbox_align="center"),
        decoder=DecoderSpec(strides=(8, 16, 32), output_name="output"),
        class_names=("car", "pedestrian"),
    )


def test_sidecar_round_trip_records_model_hash(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model bytes")
    path = write_sidecar(model, sample_metadata())
    assert path == tmp_path / "model.onnx.json" == sidecar_path(model)
    loaded = load_sidecar(model)
    import dataclasses
    import hashlib

    assert loaded.model_sha256 == hashlib.sha256(b"model bytes").hexdigest()
    assert dataclasses.replace(loaded, model_sha256=None) == sample_metadata()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_sidecar_of_another_model_is_refused(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model bytes")
    write_sidecar(model, sample_metadata())
    model.write_bytes(b"retrained model bytes")
    with pytest.raises(ModelMetadataError, match="belongs to another model"):
        load_sidecar(model)


def test_missing_sidecar_is_none(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    assert load_sidecar(model) is None


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("class_names"), "missing the required key"),
    (lambda d: d["input"].update(channel_order="YUV"), "channel_order"),
    (lambda d: d["input"].update(std=[1, 0, 1]), "std"),
    (lambda d: d["decoder"].update(type="ssd"), "decoder.type"),
    (lambda d: d.update(format_version=9), "format_version"),
    (lambda d: d.update(extra_key=1), "unknown metadata keys"),
    (lambda d: d["input"].update(colour="x"), "malformed"),
    (lambda d: d["input"].update(height=32.0), "input.height must be an integer"),  # found by fuzzing
    (lambda d: d["input"].update(pad_value=True), "input.pad_value must be an integer"),
    (lambda d: d["decoder"].update(strides=[8, 16.5, 32]), "decoder.strides must be integers"),
    (lambda d: d["decoder"].update(strides=8), "malformed"),
    (lambda d: d["decoder"].update(decoded_in_graph="false"), "decoded_in_graph must be true or false"),
])
def test_malformed_sidecars_give_clear_errors(tmp_path, change, message):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    data = sample_metadata().to_dict()
    change(data)
    sidecar_path(model).write_text(json.dumps(data))
    with pytest.raises(ModelMetadataError, match=message):
        load_sidecar(model)


def test_unparsable_sidecar(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    sidecar_path(model).write_text("{not json")
    with pytest.raises(ModelMetadataError, match="cannot read metadata sidecar"):
        load_sidecar(model)


def test_model_without_sidecar_gets_yolox_defaults(yolox_nano_path, tmp_path):
    from prune_perception.runtime.detector import Detector

    copy = tmp_path / "nano.onnx"
    shutil.copy(yolox_nano_path, copy)
    detector = Detector(copy, device="cpu")
    metadata = detector.metadata
    assert metadata.source == "defaults"
    assert (metadata.input.width, metadata.input.height) == (416, 416)
    assert metadata.input.channel_order == "BGR" and metadata.input.pad_value == 114
    assert metadata.class_names == COCO_CLASSES and metadata.decoder.strides == (8, 16, 32)


def test_sidecar_overrides_defaults_and_class_count_is_checked(yolox_nano_path, tmp_path):
    from prune_perception.runtime.detector import Detector

    copy = tmp_path / "nano.onnx"
    shutil.copy(yolox_nano_path, copy)
    metadata = ModelMetadata(InputSpec(width=416, height=416), DecoderSpec(), tuple(f"c{i}" for i in range(80)))
    write_sidecar(copy, metadata)
    detector = Detector(copy, device="cpu")
    assert detector.metadata.source == "sidecar" and detector.metadata.class_names[0] == "c0"

    write_sidecar(copy, ModelMetadata(InputSpec(width=416, height=416), DecoderSpec(), ("a", "b")))
    with pytest.raises(ModelMetadataError, match="outputs 80 classes but its metadata names 2"):
        Detector(copy, device="cpu")
