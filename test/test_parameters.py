"""The node's declared parameters, config/detector.yaml and the README tables agree, and bad
values are refused with clear messages (at start-up and at run time)."""

from pathlib import Path

import pytest
import yaml
from rclpy.node import Node
from rclpy.parameter import Parameter

from prune_perception.ros.bag_player_node import BAG_PLAYER_PARAMETERS
from prune_perception.ros.detector_parameters import DETECTOR_PARAMETERS
from prune_perception.ros.evaluator_node import EVALUATOR_PARAMETERS
from prune_perception.ros.parameters import (
    ParameterValidationError,
    declare_parameters,
    markdown_table,
)
from prune_perception.ros.sim_camera_node import SIM_CAMERA_PARAMETERS
from prune_perception.ros.video_publisher_node import VIDEO_PUBLISHER_PARAMETERS

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_lists_every_parameter_with_its_default():
    document = yaml.safe_load((ROOT / "config" / "detector.yaml").read_text())
    values = document["/**"]["ros__parameters"]
    assert list(values) == [spec.name for spec in DETECTOR_PARAMETERS]
    for spec in DETECTOR_PARAMETERS:
        value = tuple(values[spec.name]) if isinstance(spec.default, tuple) else values[spec.name]
        assert value == spec.default and type(value) is type(spec.default), spec.name


def test_presets_only_set_declared_parameters_with_valid_values():
    specs = {spec.name: spec for spec in DETECTOR_PARAMETERS}
    presets = sorted((ROOT / "config" / "presets").glob("*.yaml")) + sorted((ROOT / "config" / "rigs").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"desktop_cpu", "jetson_orin", "surround_4", "surround_6"}
    for preset in presets:
        values = yaml.safe_load(preset.read_text())["/**"]["ros__parameters"]
        for name, value in values.items():
            assert name in specs, f"{preset.name}: unknown parameter {name}"
            if isinstance(specs[name].default, tuple):
                value = tuple(value)
            assert type(value) is type(specs[name].default), f"{preset.name}: {name} has the wrong type"
            assert specs[name].check(value) is None, f"{preset.name}: {specs[name].check(value)}"


def test_readme_tables_match_the_declared_parameters():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table(DETECTOR_PARAMETERS) in readme
    for table in (VIDEO_PUBLISHER_PARAMETERS, BAG_PLAYER_PARAMETERS, SIM_CAMERA_PARAMETERS, EVALUATOR_PARAMETERS):
        assert markdown_table(table) in readme


@pytest.mark.parametrize("node,specs", [("/camera/sim_camera", SIM_CAMERA_PARAMETERS), ("/evaluator", EVALUATOR_PARAMETERS)])
def test_simulation_yaml_lists_every_parameter_with_its_default(node, specs):
    values = yaml.safe_load((ROOT / "config" / "simulation.yaml").read_text())[node]["ros__parameters"]
    assert list(values) == [spec.name for spec in specs]
    for spec in specs:
        assert type(values[spec.name]) is type(spec.default), spec.name
        assert spec.check(values[spec.name]) is None, spec.check(values[spec.name])


def test_node_declares_exactly_the_table(rclpy_session, yolox_nano_path):
    from prune_perception.ros.detector_node import DetectorNode

    node = DetectorNode(parameter_overrides=[Parameter("model_path", value=str(yolox_nano_path))])
    try:
        declared = set(node._parameters) - {"use_sim_time", "start_type_description_service"}
        assert declared == {spec.name for spec in DETECTOR_PARAMETERS}
        descriptor = node.describe_parameter("score_threshold")
        assert descriptor.floating_point_range[0].to_value == 1.0 and not descriptor.read_only
        assert not node.describe_parameter("model_path").read_only  # a new model is swapped in at run time
        assert node.describe_parameter("backend").read_only
        assert "one of: raw, compressed" in node.describe_parameter("input_transport").additional_constraints
    finally:
        node.destroy_node()


def test_bad_values_are_all_reported_at_once(rclpy_session):
    node = Node("parameter_check", parameter_overrides=[
        Parameter("score_threshold", value=1.5),
        Parameter("latency_budget_ms", value=50),
        Parameter("backend", value="tflite"),
        Parameter("device", value="gpu0"),
        Parameter("qos_depth", value=0),
        Parameter("cameras", value=["front", "front"]),
    ])
    try:
        with pytest.raises(ParameterValidationError) as error:
            declare_parameters(node, DETECTOR_PARAMETERS)
        message = str(error.value)
        assert "score_threshold is outside its allowed range [0.0, 1.0]" in message
        assert "latency_budget_ms must be of type double (write a decimal point, e.g. 50.0)" in message
        assert "backend='tflite' is not one of ['auto', 'onnxruntime', 'tensorrt', 'torch']" in message
        assert "device='gpu0' must be auto, cpu, cuda or cuda:N" in message
        assert "qos_depth is outside its allowed range [1, 1000]" in message
        assert "cameras: ['front', 'front'] names a camera twice" in message
    finally:
        node.destroy_node()


def test_run_time_changes_are_validated_and_applied(rclpy_session, yolox_nano_path):
    import time

    from prune_perception.ros.detector_node import DetectorNode

    node = DetectorNode(parameter_overrides=[Parameter("model_path", value=str(yolox_nano_path))])
    try:
        deadline = time.monotonic() + 30
        pipeline = node.pipeline
        while pipeline.detector is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipeline.detector is not None, pipeline.model_error
        results = node.set_parameters([Parameter("score_threshold", value=0.55), Parameter("max_detections", value=7)])
        assert all(r.successful for r in results)
        assert pipeline.detector.config.score_threshold == 0.55 and pipeline.detector.config.max_detections == 7

        assert not node.set_parameters([Parameter("score_threshold", value=1.5)])[0].successful
        assert not node.set_parameters([Parameter("class_id_format", value="label")])[0].successful
        assert not node.set_parameters([Parameter("model_path", value="/other.onnx")])[0].successful
        result = node.set_parameters([Parameter("warn_deadline_miss_rate", value=0.9)])[0]
        assert not result.successful and "must not exceed" in result.reason

        assert node.set_parameters([Parameter("latency_budget_ms", value=20.0)])[0].successful
        assert pipeline.cameras[0].stats.budget_ms == 20.0
        assert pipeline.detector.config.score_threshold == 0.55  # rejected changes changed nothing
    finally:
        node.destroy_node()
