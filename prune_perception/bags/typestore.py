"""The rosbags type store: ROS 2 Kilted messages plus vision_msgs (4.x layout).

rosbags ships the core ROS 2 message types but not ``vision_msgs``. Its ``.msg`` files are read
from the first ``share/vision_msgs/msg`` folder found on ``AMENT_PREFIX_PATH`` (a sourced ROS
distribution) or in this Python environment (where ``scripts/build_vision_msgs.sh`` installs
the bundled copy), so the bag types always match the node's messages.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

from prune_perception.errors import PrunePerceptionError

VISION_MSGS = ("Point2D", "Pose2D", "BoundingBox2D", "ObjectHypothesis", "ObjectHypothesisWithPose", "Detection2D",
               "Detection2DArray")


def vision_msgs_definitions() -> Path:
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        folder = Path(prefix) / "share" / "vision_msgs" / "msg"
        if all((folder / f"{name}.msg").exists() for name in VISION_MSGS):
            return folder
    raise PrunePerceptionError(
        "vision_msgs .msg files not found under AMENT_PREFIX_PATH or this environment "
        f"({sys.prefix}/share/vision_msgs/msg); run scripts/build_vision_msgs.sh <venv> or source ROS 2"
    )


@functools.lru_cache(maxsize=1)
def bag_typestore() -> Any:
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    folder = vision_msgs_definitions()
    types: dict[str, Any] = {}
    for name in VISION_MSGS:
        types.update(get_types_from_msg((folder / f"{name}.msg").read_text(), f"vision_msgs/msg/{name}"))
    typestore.register(types)
    return typestore
