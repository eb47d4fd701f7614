"""Run detector_node on a camera topic.

    ros2 launch prune_perception detector.launch.py model_path:=/models/yolox_nano.onnx \
        image_topic:=/camera/front/image_raw preset:=desktop_cpu

Parameters come from config/detector.yaml, then config/presets/<preset>.yaml, then the
arguments below. FASTDDS_DEFAULT_PROFILES_FILE is set to the package's large-image profile for
the processes this launch starts; the camera driver needs the same setting (see the README).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "prune_perception"
PRESETS = ["desktop_cpu", "jetson_orin"]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    image_topic = LaunchConfiguration("image_topic")
    return LaunchDescription([
        DeclareLaunchArgument("model_path", description="Model file (.onnx, .engine, .pt)"),
        DeclareLaunchArgument("preset", default_value="desktop_cpu", choices=PRESETS,
                              description="Platform preset for backend, device and latency budget"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic (CompressedImage on <topic>/compressed)"),
        DeclareLaunchArgument("detections_topic", default_value="/perception/detections"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
        DeclareLaunchArgument("node_name", default_value="detector_node"),
        SetEnvironmentVariable(
            "FASTDDS_DEFAULT_PROFILES_FILE", PathJoinSubstitution([share, "config", "fastdds_large_images.xml"])
        ),
        Node(
            package=PACKAGE,
            executable="detector_node",
            name=LaunchConfiguration("node_name"),
            output="screen",
            parameters=[
                PathJoinSubstitution([share, "config", "detector.yaml"]),
                PathJoinSubstitution([share, "config", "presets", [LaunchConfiguration("preset"), ".yaml"]]),
                {"model_path": LaunchConfiguration("model_path"), "use_sim_time": LaunchConfiguration("use_sim_time")},
            ],
            remappings=[
                ("image_raw", image_topic),
                ("image_raw/compressed", [image_topic, "/compressed"]),
                ("detections", LaunchConfiguration("detections_topic")),
            ],
        ),
    ])
