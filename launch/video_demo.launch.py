"""Play a video file as a camera and run detector_node on it.

    ros2 launch prune_perception video_demo.launch.py model_path:=/models/yolox_nano.onnx \
        video:=/data/solidWhiteRight.mp4 frame_rate_hz:=25.0
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "prune_perception"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("model_path"),
        DeclareLaunchArgument("video", description="Video file or image folder"),
        DeclareLaunchArgument("frame_rate_hz", default_value="0.0", description="0: the video's rate"),
        DeclareLaunchArgument("loop", default_value="true"),
        DeclareLaunchArgument("preset", default_value="desktop_cpu"),
        SetEnvironmentVariable(
            "FASTDDS_DEFAULT_PROFILES_FILE", PathJoinSubstitution([share, "config", "fastdds_large_images.xml"])
        ),
        Node(
            package=PACKAGE,
            executable="video_publisher",
            name="video_publisher",
            output="screen",
            parameters=[{
                "source": LaunchConfiguration("video"),
                "frame_rate_hz": LaunchConfiguration("frame_rate_hz"),
                "loop": LaunchConfiguration("loop"),
            }],
            remappings=[("image_raw", "/camera/image_raw")],
        ),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "detector.launch.py"])),
            launch_arguments={
                "model_path": LaunchConfiguration("model_path"),
                "preset": LaunchConfiguration("preset"),
                "image_topic": "/camera/image_raw",
            }.items(),
        ),
    ])
