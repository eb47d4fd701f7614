"""Run managed_detector_node and bring it to active: configure, then activate once it is inactive.

    ros2 launch prune_perception managed_detector.launch.py model_path:=/models/yolox_nano.onnx \
        image_topic:=/camera/front/image_raw preset:=desktop_cpu

A lifecycle manager (e.g. nav2_lifecycle_manager) can drive the node instead: set autostart:=false
and the node waits, unconfigured, for its transitions. Parameters as in detector.launch.py.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

PACKAGE = "prune_perception"
PRESETS = ["desktop_cpu", "jetson_orin"]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    image_topic = LaunchConfiguration("image_topic")
    autostart = IfCondition(LaunchConfiguration("autostart"))
    node = LifecycleNode(
        package=PACKAGE,
        executable="managed_detector_node",
        name=LaunchConfiguration("node_name"),
        namespace="",
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
    )
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=Transition.TRANSITION_CONFIGURE), condition=autostart)
    activate_when_inactive = RegisterEventHandler(
        OnStateTransition(target_lifecycle_node=node, start_state="configuring", goal_state="inactive", entities=[
            EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                        transition_id=Transition.TRANSITION_ACTIVATE))]),
        condition=autostart,
    )
    return LaunchDescription([
        DeclareLaunchArgument("model_path", description="Model file (.onnx, .engine, .pt)"),
        DeclareLaunchArgument("preset", default_value="desktop_cpu", choices=PRESETS,
                              description="Platform preset for backend, device and latency budget"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic (CompressedImage on <topic>/compressed)"),
        DeclareLaunchArgument("detections_topic", default_value="/perception/detections"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
        DeclareLaunchArgument("node_name", default_value="managed_detector_node"),
        DeclareLaunchArgument("autostart", default_value="true", description="configure and activate at launch"),
        SetEnvironmentVariable(
            "FASTDDS_DEFAULT_PROFILES_FILE", PathJoinSubstitution([share, "config", "fastdds_large_images.xml"])
        ),
        node,
        activate_when_inactive,
        configure,
    ])
