"""ROS 2 managed (lifecycle) detector node: the lifecycle shell of the detector's frame path.

Transitions (driven by a lifecycle manager, a launch file or ``ros2 lifecycle set``):

- **configure**: checks the parameters and loads and warms the model. On failure the node stays
  unconfigured, with the reason in its log and on ``/diagnostics``; configure may be retried.
- **activate**: subscribes to the cameras and starts publishing detections.
- **deactivate**: stops processing (no subscription, no detections); the model stays loaded.
- **cleanup**: releases the model.
- **shutdown**: ends cleanly from any state.

Nothing but ``/diagnostics`` is published outside the active state. The frame path is
:class:`~prune_perception.ros.detector_pipeline.DetectorPipeline`, the same as ``detector_node``'s.
"""

from __future__ import annotations

import sys
from typing import Any

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from prune_perception.ros.detector_parameters import DETECTOR_PARAMETERS, require_model_path
from prune_perception.ros.detector_pipeline import DetectorPipeline
from prune_perception.ros.node_main import run_node
from prune_perception.ros.parameters import ParameterValidationError, declare_parameters


class ManagedDetectorNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("managed_detector_node", **kwargs)
        self.pipeline = DetectorPipeline(self, declare_parameters(self, DETECTOR_PARAMETERS), worker_loads_model=False)
        self._enter("unconfigured", model_error=None)

    def _enter(self, state: str, model_error: str | None = None) -> None:
        self.pipeline.state_note = state
        self.pipeline.model_error = model_error

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            require_model_path(self.pipeline.params)
        except ParameterValidationError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            self._enter("unconfigured", f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        if not self.pipeline.load_model():  # it logs why and keeps the reason for diagnostics
            self._enter("unconfigured", f"configure failed: {self.pipeline.model_error}")
            return TransitionCallbackReturn.FAILURE
        self._enter("inactive")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.pipeline.start()
        self._enter("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.pipeline.stop()
        self._enter("inactive")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.pipeline.stop()
        self.pipeline.release_model()
        self._enter("unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.pipeline.stop()
        self.pipeline.release_model()
        self._enter("finalized")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.pipeline.stop()
        self.pipeline.release_model()
        self._enter("unconfigured", "recovered from an error; configure again")
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self.pipeline.destroy()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(ManagedDetectorNode, args))


if __name__ == "__main__":
    main()
