"""Exceptions raised by the library. Only the command-line entry points turn them into exits."""


class PrunePerceptionError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelLoadError(PrunePerceptionError):
    """The model file is missing, unreadable, corrupt, or was built for another platform."""


class ModelMetadataError(PrunePerceptionError):
    """The metadata sidecar is missing where it is required, malformed, or names another model."""


class BackendUnavailableError(PrunePerceptionError):
    """The requested runtime (onnxruntime, TensorRT, torch) or device (GPU) is not available."""


class InferenceError(PrunePerceptionError):
    """Running the model failed, or its output does not have the layout the decoder expects."""


class ImageFormatError(PrunePerceptionError):
    """An input image cannot be interpreted (bad encoding, truncated data, corrupt compression)."""


class OutputWriteError(PrunePerceptionError):
    """An output could not be written (disk full, no permission); nothing partial was left."""
