"""detector_node on a CARLA ego-vehicle camera (carla-ros-bridge), on CARLA's simulation time.

    ros2 launch carla_ros_bridge carla_ros_bridge_with_example_ego_vehicle.launch.py synchronous_mode:=true
    ros2 launch prune_perception carla.launch.py model_path:=/models/student.onnx \
        ego_role:=ego_vehicle camera_role:=rgb_front

The bridge publishes /carla/<ego role>/<camera role>/image (bgra8) and camera_info, and /clock
in synchronous mode; the detector subscribes to that image topic with use_sim_time.
"""

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "prune_perception"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    image_topic = ["/carla/", LaunchConfiguration("ego_role"), "/", LaunchConfiguration("camera_role"), "/image"]
    return LaunchDescription([
        DeclareLaunchArgument("model_path"),
        DeclareLaunchArgument("ego_role", default_value="ego_vehicle", description="role_name of the ego vehicle"),
        DeclareLaunchArgument("camera_role", default_value="rgb_front", description="role_name of the camera sensor"),
        DeclareLaunchArgument("preset", default_value="desktop_cpu"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "detector.launch.py"])),
            launch_arguments={"model_path": LaunchConfiguration("model_path"), "preset": LaunchConfiguration("preset"),
                              "image_topic": image_topic, "use_sim_time": "true",
                              "detections_topic": ["/carla/", LaunchConfiguration("ego_role"), "/detections"]}.items(),
        ),
    ])
