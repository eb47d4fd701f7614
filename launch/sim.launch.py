"""Simulation in the loop: sim_camera -> detector_node -> evaluator, all on simulation time.

    ros2 launch prune_perception sim.launch.py model_path:=/models/sample_teacher.onnx seed:=3

The evaluator publishes the running AP and latency on /diagnostics (and ~/ap50).
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
    simulation = PathJoinSubstitution([share, "config", "simulation.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("model_path", description="a model trained on the scene classes (train-sample)"),
        DeclareLaunchArgument("seed", default_value="0"),
        DeclareLaunchArgument("preset", default_value="desktop_cpu"),
        SetEnvironmentVariable(
            "FASTDDS_DEFAULT_PROFILES_FILE", PathJoinSubstitution([share, "config", "fastdds_large_images.xml"])
        ),
        Node(package=PACKAGE, executable="sim_camera", name="sim_camera", namespace="camera", output="screen",
             parameters=[simulation, {"seed": LaunchConfiguration("seed")}]),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "detector.launch.py"])),
            launch_arguments={"model_path": LaunchConfiguration("model_path"), "preset": LaunchConfiguration("preset"),
                              "image_topic": "/camera/image_raw", "use_sim_time": "true",
                              "detections_topic": "/perception/detections"}.items(),
        ),
        Node(package=PACKAGE, executable="evaluator", name="evaluator", output="screen",
             parameters=[simulation, {"use_sim_time": True}],
             remappings=[("detections", "/perception/detections"), ("ground_truth", "/camera/ground_truth")]),
    ])
