"""Print every node's parameter table as the README shows it (a test checks the README has them):

    .venv/bin/python scripts/parameter_tables.py
"""

from prune_perception.ros.bag_player_node import BAG_PLAYER_PARAMETERS
from prune_perception.ros.detector_parameters import DETECTOR_PARAMETERS
from prune_perception.ros.evaluator_node import EVALUATOR_PARAMETERS
from prune_perception.ros.parameters import markdown_table
from prune_perception.ros.sim_camera_node import SIM_CAMERA_PARAMETERS
from prune_perception.ros.video_publisher_node import VIDEO_PUBLISHER_PARAMETERS

for name, table in (("detector_node and managed_detector_node", DETECTOR_PARAMETERS),
                    ("video_publisher", VIDEO_PUBLISHER_PARAMETERS), ("bag_player", BAG_PLAYER_PARAMETERS),
                    ("sim_camera", SIM_CAMERA_PARAMETERS), ("evaluator", EVALUATOR_PARAMETERS)):
    print(f"{name}\n\n{markdown_table(table)}\n")
