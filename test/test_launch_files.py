"""launch/launch_ros are not on PyPI, so the launch files are checked statically: the
executables, parameter files, presets and remapped topics they name must exist."""

import ast
import re
from pathlib import Path

import pytest

from prune_perception.ros.camera_streams import COMPRESSED_IMAGE_TOPIC, DETECTIONS_TOPIC, IMAGE_TOPIC

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
NODE_TOPICS = {
    "detector_node": {IMAGE_TOPIC, COMPRESSED_IMAGE_TOPIC, DETECTIONS_TOPIC},
    "managed_detector_node": {IMAGE_TOPIC, COMPRESSED_IMAGE_TOPIC, DETECTIONS_TOPIC},
    "video_publisher": {"image_raw", "image_raw/compressed"},
    "bag_player": set(),
    "sim_camera": {"image_raw", "camera_info", "ground_truth"},
    "evaluator": {"detections", "ground_truth"},
}


def console_scripts():
    setup = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(setup):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return {entry.value.split("=")[0].strip() for entry in value.elts}
    raise AssertionError("no console_scripts in setup.py")


def calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def literal(tree, node):
    """The value of a constant, or of a module-level NAME = <literal> the node refers to."""
    if isinstance(node, ast.Name):
        assign = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == node.id)
        return ast.literal_eval(assign.value)
    return ast.literal_eval(node)


def constants(node):
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_there_are_launch_files():
    assert {p.name for p in LAUNCH_FILES} >= {"detector.launch.py", "video_demo.launch.py", "replay.launch.py",
                                              "sim.launch.py", "carla.launch.py", "gazebo.launch.py",
                                              "surround.launch.py", "managed_detector.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_existing_things(path):
    tree = ast.parse(path.read_text())
    scripts = console_scripts()
    nodes = calls(tree, "Node") + calls(tree, "LifecycleNode")
    assert nodes or calls(tree, "IncludeLaunchDescription"), "launch file starts no node"
    for node in nodes:
        assert literal(tree, keyword(node, "package")) == "prune_perception"
        executable = literal(tree, keyword(node, "executable"))
        assert executable in scripts, f"{executable} is not a console script"
        remappings = keyword(node, "remappings")
        for pair in remappings.elts if remappings else []:
            source = pair.elts[0].value
            assert source in NODE_TOPICS[executable], f"{executable} has no topic {source!r} to remap"

    # Every package share path (PathJoinSubstitution([share, "config", ...])) must exist in the source tree.
    for join in calls(tree, "PathJoinSubstitution"):
        parts = join.args[0].elts[1:]
        if any(not isinstance(p, ast.Constant) for p in parts):
            continue  # the preset and rig paths, checked below
        relative = Path(*[p.value for p in parts])
        source = ROOT / relative
        if relative.name == "fastdds_large_images.xml":
            source = ROOT / "prune_perception" / "ros" / relative.name  # installed into share/config by setup.py
        assert source.exists(), f"{relative} does not exist"

    presets = [c for c in calls(tree, "DeclareLaunchArgument") if c.args[0].value == "preset"]
    for preset in presets:
        choices = keyword(preset, "choices")
        names = literal(tree, choices) if choices is not None else []
        default = literal(tree, keyword(preset, "default_value"))
        for name in names + [default]:
            assert (ROOT / "config" / "presets" / f"{name}.yaml").exists(), f"preset {name} missing"
    for rig in [c for c in calls(tree, "DeclareLaunchArgument") if c.args[0].value == "rig"]:
        for name in literal(tree, keyword(rig, "choices")) + [literal(tree, keyword(rig, "default_value"))]:
            assert (ROOT / "config" / "rigs" / f"{name}.yaml").exists(), f"rig {name} missing"


def test_included_launch_files_exist():
    for path in LAUNCH_FILES:
        text = path.read_text()
        for included in re.findall(r'"launch",\s*"([\w.]+\.launch\.py)"', text):
            assert (ROOT / "launch" / included).exists()


def test_setup_installs_what_launch_files_use():
    setup = (ROOT / "setup.py").read_text()
    for needed in ('glob("launch/*.launch.py")', 'glob("config/*.yaml")', 'glob("config/presets/*.yaml")',
                   'glob("config/rigs/*.yaml")',
                   "fastdds_large_images.xml"):
        assert needed in setup
