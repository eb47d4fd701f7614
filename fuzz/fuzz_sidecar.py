"""Fuzz harness: the metadata sidecar parser (``<model>.json``), which the Detector and
detector_node read before they load a model, and what the Detector builds from a sidecar that
parses (the preprocessor, run on a frame, and the decoder). Mutated from a valid sidecar of each
kind."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["prune_perception"]):
    from prune_perception.errors import PrunePerceptionError
    from prune_perception.runtime.metadata import DecoderSpec, InputSpec, ModelMetadata, load_sidecar, sidecar_path
    from prune_perception.runtime.postprocess import YoloxDecoder
    from prune_perception.runtime.preprocess import Preprocessor

_FOLDER = Path(tempfile.mkdtemp(prefix="fuzz_sidecar_"))
MODEL = _FOLDER / "model.onnx"
MODEL.write_bytes(b"\x08\x07")  # present, so that the sha256 check runs too
FRAME = np.zeros((54, 96, 3), np.uint8)


def test_one_input(data: bytes) -> None:
    sidecar_path(MODEL).write_bytes(data)
    try:
        metadata = load_sidecar(MODEL)
        if metadata is not None and metadata.input.width * metadata.input.height <= 4096 * 4096:
            Preprocessor(metadata.input)(FRAME)
            YoloxDecoder(metadata.input.width, metadata.input.height, metadata.decoder.strides,
                         metadata.decoder.decoded_in_graph)
    except PrunePerceptionError:
        pass


def seeds() -> list[bytes]:
    plain = ModelMetadata(input=InputSpec(width=416, height=256), decoder=DecoderSpec(),
                          class_names=("person", "car"))
    specialized = ModelMetadata(input=InputSpec(width=320, height=320, layout="NHWC"), decoder=DecoderSpec(
        strides=(8, 16, 32), decoded_in_graph=True), class_names=("car", "bus"), class_ids=(2, 5))
    return [json.dumps(m.to_dict()).encode() for m in (plain, specialized)]


if __name__ == "__main__":
    from common import fuzz_main

    fuzz_main(test_one_input, seeds)
