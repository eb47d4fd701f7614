"""ament_python package: builds with colcon in a ROS 2 workspace and pip-installs into a venv."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "prune_perception"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["ros/*.xml", "samples/*.onnx", "samples/*.json", "samples/*.md", "samples/*.png"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + [f"{PACKAGE}/ros/fastdds_large_images.xml"]),
        (f"share/{PACKAGE}/config/presets", glob("config/presets/*.yaml")),
        (f"share/{PACKAGE}/config/rigs", glob("config/rigs/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="prune_perception developers",
    maintainer_email="dev@prune-perception.invalid",
    description="Compress camera detectors and run them in ROS 2 with per-frame latency budgets.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "detector_node = prune_perception.ros.detector_node:main",
            "managed_detector_node = prune_perception.ros.managed_detector_node:main",
            "video_publisher = prune_perception.ros.video_publisher_node:main",
            "bag_player = prune_perception.ros.bag_player_node:main",
            "sim_camera = prune_perception.ros.sim_camera_node:main",
            "evaluator = prune_perception.ros.evaluator_node:main",
            "prune-perception = prune_perception.cli.main:main",
        ],
    },
)
