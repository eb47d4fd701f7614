"""detector_node on a Gazebo (gz-sim) camera bridged to ROS 2, on Gazebo's simulation time.

    ros2 run ros_gz_image image_bridge /camera                      # gz image -> ROS sensor_msgs/Image
    ros2 run ros_gz_bridge parameter_bridge /clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock
    ros2 launch prune_perception gazebo.launch.py model_path:=/models/student.onnx image_topic:=/camera

ros_gz_image publishes the gz camera topic under the same name (rgb8); with the clock bridged,
the detector runs on use_sim_time.
"""

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "prune_perception"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("model_path"),
        DeclareLaunchArgument("image_topic", default_value="/camera", description="the bridged camera topic"),
        DeclareLaunchArgument("preset", default_value="desktop_cpu"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "detector.launch.py"])),
            launch_arguments={"model_path": LaunchConfiguration("model_path"), "preset": LaunchConfiguration("preset"),
                              "image_topic": LaunchConfiguration("image_topic"), "use_sim_time": "true",
                              "detections_topic": "/perception/detections"}.items(),
        ),
    ])
