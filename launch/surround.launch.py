"""Run one detector_node for a surround camera rig: every camera's frames in one batched model call.

    ros2 launch prune_perception surround.launch.py model_path:=/models/yolox_nano_batch.onnx \
        rig:=surround_4 preset:=jetson_orin namespace:=/perception

Parameters come from config/detector.yaml, then config/presets/<preset>.yaml, then
config/rigs/<rig>.yaml (the camera names), then the arguments below. The node subscribes
<namespace>/<camera>/image_raw and publishes <namespace>/<camera>/detections; point the camera
drivers at those topics (or remap them here). Use a model with a dynamic batch axis (compress with
export.max_batch set to the camera count); a fixed-batch model runs one call per camera.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "prune_perception"
PRESETS = ["desktop_cpu", "jetson_orin"]
RIGS = ["surround_4", "surround_6"]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("model_path", description="Model file (.onnx with a dynamic batch axis, .engine, .pt)"),
        DeclareLaunchArgument("rig", default_value="surround_4", choices=RIGS, description="Camera rig (config/rigs)"),
        DeclareLaunchArgument("preset", default_value="desktop_cpu", choices=PRESETS,
                              description="Platform preset for backend, device and latency budget"),
        DeclareLaunchArgument("namespace", default_value="/perception"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
        SetEnvironmentVariable(
            "FASTDDS_DEFAULT_PROFILES_FILE", PathJoinSubstitution([share, "config", "fastdds_large_images.xml"])
        ),
        Node(
            package=PACKAGE,
            executable="detector_node",
            name="surround_detector",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[
                PathJoinSubstitution([share, "config", "detector.yaml"]),
                PathJoinSubstitution([share, "config", "presets", [LaunchConfiguration("preset"), ".yaml"]]),
                PathJoinSubstitution([share, "config", "rigs", [LaunchConfiguration("rig"), ".yaml"]]),
                {"model_path": LaunchConfiguration("model_path"), "use_sim_time": LaunchConfiguration("use_sim_time")},
            ],
        ),
    ])
