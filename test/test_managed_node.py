"""managed_detector_node as a real process, its lifecycle driven from this process through the
node's lifecycle services, over real DDS."""

from __future__ import annotations

import shutil
import time

import pytest
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from prune_perception.ros.image_conversion import array_to_image_msg
from prune_perception.ros.live_session import NodeProcess, ros_arguments

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
NAMESPACE = "/managed"
NODE = f"{NAMESPACE}/managed_detector_node"


class LifecycleProbe(Node):
    """A lifecycle manager in miniature: changes the node's state, feeds it frames, records output."""

    def __init__(self, frame) -> None:
        super().__init__("lifecycle_probe")
        self.frame = frame
        self.change_state = self.create_client(ChangeState, f"{NODE}/change_state")
        self.get_state = self.create_client(GetState, f"{NODE}/get_state")
        self.image_pub = self.create_publisher(Image, f"{NAMESPACE}/image_raw", RELIABLE)
        self.detections: list[Detection2DArray] = []
        self.create_subscription(Detection2DArray, f"{NAMESPACE}/detections", self.detections.append, RELIABLE)
        self.diagnostics: list[tuple[int, str, dict[str, str]]] = []
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.sent = 0

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(f"{NODE}:"):
                self.diagnostics.append((status.level[0], status.message, {kv.key: kv.value for kv in status.values}))

    def call(self, client, request, process: NodeProcess, timeout_s: float = 60.0):
        assert client.wait_for_service(timeout_sec=20.0), process.log_text()[-3000:]
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self, future, timeout_sec=timeout_s)
        assert future.done(), process.log_text()[-3000:]
        return future.result()

    def transition(self, transition_id: int, process: NodeProcess) -> bool:
        return self.call(self.change_state, ChangeState.Request(transition=Transition(id=transition_id)), process).success

    def state(self, process: NodeProcess) -> int:
        return self.call(self.get_state, GetState.Request(), process).current_state.id

    def feed(self, seconds: float, process: NodeProcess) -> None:
        """Publish a frame every 0.1 s for ``seconds``, spinning meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sent += 1
            self.image_pub.publish(array_to_image_msg(self.frame, "bgr8", Header(stamp=TimeMsg(sec=self.sent), frame_id="cam")))
            end = time.monotonic() + 0.1
            while time.monotonic() < end:
                rclpy.spin_once(self, timeout_sec=0.02)
            assert process.returncode is None, process.log_text()[-3000:]


def test_lifecycle_transitions_from_another_process(rclpy_session, yolox_nano_path, dashcam_frames, tmp_path):
    model = tmp_path / "arrives_later.onnx"
    arguments = ros_arguments({"model_path": str(model), "intra_op_threads": 1, "qos_reliability": "reliable",
                               "diagnostics_period_s": 0.2}, namespace=NAMESPACE)
    process = NodeProcess("prune_perception.ros.managed_detector_node", arguments, tmp_path / "managed.log").start()
    probe = LifecycleProbe(dashcam_frames[0])
    try:
        assert probe.state(process) == State.PRIMARY_STATE_UNCONFIGURED
        probe.feed(1.0, process)
        assert not probe.detections  # nothing before activation

        # a failing configure (the model is missing): reported, and the node stays unconfigured
        assert not probe.transition(Transition.TRANSITION_CONFIGURE, process)
        assert probe.state(process) == State.PRIMARY_STATE_UNCONFIGURED
        probe.diagnostics.clear()
        probe.feed(0.5, process)
        level, message, values = probe.diagnostics[-1]
        assert level == 2 and "configure failed: model file not found" in message
        assert values["lifecycle_state"] == "unconfigured" and values["model_ready"] == "false"
        assert "cannot run the model: model file not found" in process.log_text()

        # recoverable: the model arrives, configure again
        shutil.copy(yolox_nano_path, model)
        assert probe.transition(Transition.TRANSITION_CONFIGURE, process), process.log_text()[-3000:]
        assert probe.state(process) == State.PRIMARY_STATE_INACTIVE
        probe.feed(1.0, process)
        assert not probe.detections  # configured but inactive: still nothing
        probe.diagnostics.clear()
        probe.feed(0.3, process)
        assert probe.diagnostics[-1][2]["model_ready"] == "true" and probe.diagnostics[-1][2]["lifecycle_state"] == "inactive"

        assert probe.transition(Transition.TRANSITION_ACTIVATE, process)
        assert probe.state(process) == State.PRIMARY_STATE_ACTIVE
        probe.feed(2.0, process)
        assert len(probe.detections) >= 5, process.log_text()[-3000:]
        assert all(d.header.frame_id == "cam" for d in probe.detections)

        assert probe.transition(Transition.TRANSITION_DEACTIVATE, process)
        probe.feed(0.3, process)  # let what was in flight arrive
        count = len(probe.detections)
        probe.feed(1.5, process)
        assert len(probe.detections) == count  # silence after deactivate
        probe.diagnostics.clear()
        probe.feed(0.3, process)
        assert probe.diagnostics[-1][2]["model_ready"] == "true"  # the model stays loaded

        assert probe.transition(Transition.TRANSITION_ACTIVATE, process)  # no reload needed
        probe.feed(1.0, process)
        assert len(probe.detections) > count
        assert probe.transition(Transition.TRANSITION_DEACTIVATE, process)
        assert probe.transition(Transition.TRANSITION_CLEANUP, process)
        assert probe.state(process) == State.PRIMARY_STATE_UNCONFIGURED
        probe.diagnostics.clear()
        probe.feed(0.3, process)
        assert probe.diagnostics[-1][2]["model_ready"] == "false"  # cleanup released the model
        assert probe.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN, process)
        assert probe.state(process) == State.PRIMARY_STATE_FINALIZED
        assert process.returncode is None
    finally:
        probe.destroy_node()
        assert process.stop() == 0, process.log_text()[-3000:]
