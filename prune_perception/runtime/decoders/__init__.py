"""One decoder per detector family, chosen by the model's metadata (``decoder.type``).

Adding a family is one module here with a :class:`~prune_perception.runtime.decoders.base.Decoder`
subclass, its name in :data:`prune_perception.runtime.metadata.DECODERS`, and a line in
:func:`build_decoder`.
"""

from __future__ import annotations

from prune_perception.runtime.decoders.base import CandidateBoxes, Decoder
from prune_perception.runtime.decoders.end_to_end import EndToEndDecoder
from prune_perception.runtime.decoders.ultralytics import UltralyticsDecoder
from prune_perception.runtime.decoders.yolox import YoloxDecoder
from prune_perception.runtime.metadata import ModelMetadata

__all__ = ["CandidateBoxes", "Decoder", "EndToEndDecoder", "UltralyticsDecoder", "YoloxDecoder", "build_decoder"]


def build_decoder(metadata: ModelMetadata) -> Decoder:
    """The decoder that ``metadata.decoder`` names, for the metadata's input size."""
    spec, decoder = metadata.input, metadata.decoder
    if decoder.type == "end_to_end":
        return EndToEndDecoder(metadata.num_classes)
    if decoder.type == "ultralytics":
        return UltralyticsDecoder(spec.width, spec.height, decoder.strides)
    return YoloxDecoder(spec.width, spec.height, decoder.strides, decoder.decoded_in_graph)
