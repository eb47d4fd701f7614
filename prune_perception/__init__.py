"""prune_perception: compress camera detectors and run them on the vehicle under ROS 2.

The core library (``runtime``, ``eval``, ``data``) has no ROS dependency; ``ros`` holds the
thin ROS 2 nodes on top of it.
"""

__version__ = "0.1.0"
