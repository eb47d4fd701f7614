"""The package's layers import only downward, in this order (a layer may import its own and any
below it):

    errors, files, stamps, optional          (base)
    models -> runtime -> data -> sim -> bags -> eval, export -> compress -> ros, mission, cli

``sim`` is a data source (synthetic scenes with exact ground truth), which the bag writer records;
``compress`` trains, so the sample teacher lives there. Read from the source (every import, lazy
ones included), so a new upward import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prune_perception"
BASE = {"errors", "files", "stamps", "optional"}
ORDER = [BASE, {"models"}, {"runtime"}, {"data"}, {"sim"}, {"bags"}, {"eval", "export"}, {"compress"},
         {"ros", "mission", "cli"}]
RANK = {layer: rank for rank, layers in enumerate(ORDER) for layer in layers}
ALLOWED = {
    "models": BASE,
    "runtime": BASE | {"models"},  # models: the pruned-model file format the torch backend reads
}
TOP = {"ros", "mission", "cli"}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def test_every_layer_imports_only_its_own_and_those_below():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        layer = layer_of(path)
        if layer == "__init__":
            continue
        assert layer in RANK, f"{path.relative_to(PACKAGE)}: layer {layer!r} is not in the order: place it"
        for name in imports_of(path):
            if name.startswith("prune_perception."):
                target = name.split(".")[1]
                if RANK.get(target, len(ORDER)) > RANK[layer]:
                    upward.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert upward == []


def test_the_runtime_imports_nothing_above_it():
    for path in (PACKAGE / "runtime").rglob("*.py"):
        for name in imports_of(path):
            if name.startswith("prune_perception."):
                assert name.split(".")[1] in ALLOWED["runtime"] | {"runtime"}, f"{path.name} imports {name}"


def test_only_the_ros_layer_and_its_users_import_rclpy_or_the_nodes():
    for path in PACKAGE.rglob("*.py"):
        if layer_of(path) in TOP:
            continue
        for name in imports_of(path):
            assert not name.startswith(("rclpy", "prune_perception.ros")), f"{path.relative_to(PACKAGE)} imports {name}"


def test_each_node_owns_its_parameter_table():
    names = imports_of(PACKAGE / "ros" / "parameters.py")
    assert not any(name.endswith("_node") or name.endswith("detector_pipeline") for name in names), names
