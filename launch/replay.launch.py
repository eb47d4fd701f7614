"""Replay a rosbag2 file through detector_node, with the bag's time on /clock.

    ros2 launch prune_perception replay.launch.py bag:=/data/drive_bag model_path:=/models/student.onnx \
        image_topic:=/camera/image_raw rate:=1.0

The package's bag_player (rosbags; no rosbag2 needed) plays the bag; detector_node runs with
use_sim_time, so its end-to-end latency is measured in the bag's time. Where rosbag2 exists,
`ros2 bag play --clock 500 <bag>` next to detector.launch.py use_sim_time:=true does the same.
"""

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "prune_perception"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 folder, .mcap or .db3"),
        DeclareLaunchArgument("model_path"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw", description="the bag's image topic"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate; 0 paces on the detections"),
        DeclareLaunchArgument("preset", default_value="desktop_cpu"),
        SetEnvironmentVariable(
            "FASTDDS_DEFAULT_PROFILES_FILE", PathJoinSubstitution([share, "config", "fastdds_large_images.xml"])
        ),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "detector.launch.py"])),
            launch_arguments={"model_path": LaunchConfiguration("model_path"), "preset": LaunchConfiguration("preset"),
                              "image_topic": LaunchConfiguration("image_topic"), "use_sim_time": "true",
                              "detections_topic": "/detections"}.items(),
        ),
        Node(
            package=PACKAGE,
            executable="bag_player",
            name="bag_player",
            output="screen",
            parameters=[{"bag": LaunchConfiguration("bag"), "rate": LaunchConfiguration("rate"),
                         "topics": LaunchConfiguration("image_topic"), "wait_for_subscribers": 1}],
        ),
    ])
