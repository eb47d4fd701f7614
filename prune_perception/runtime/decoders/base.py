"""What every decoder gives: candidate boxes in model-input pixels, before NMS."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class CandidateBoxes:
    """Boxes that passed the score threshold, before NMS, in model-input pixels."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray


class Decoder(ABC):
    """Turns one image's raw model output into :class:`CandidateBoxes`."""

    nms_in_graph = False
    """True where the model's own graph ran NMS: its boxes are thresholded and capped, not suppressed again."""

    @abstractmethod
    def num_classes_of(self, output_shape: Sequence[int | str | None]) -> int | None:
        """The class count an output of ``output_shape`` carries (None: the layout does not say).

        Raises:
            InferenceError: the shape is not this family's layout.
        """

    @abstractmethod
    def candidates(self, raw: np.ndarray, score_threshold: float) -> CandidateBoxes:
        """The boxes of ``raw`` (one image's output) scoring above ``score_threshold``."""
