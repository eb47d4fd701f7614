"""The ``prune-perception compress`` configuration: YAML sections mapped onto dataclasses.

Unknown keys are errors (a typo must not silently fall back to a default), and every value can
be overridden from the command line as ``--set section.key=value`` (YAML syntax for the value).
``config/compress.yaml`` documents every option.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prune_perception.compress.losses import DistillConfig
from prune_perception.compress.train import TrainConfig
from prune_perception.data.augment import AugmentConfig
from prune_perception.errors import PrunePerceptionError


class ConfigError(PrunePerceptionError):
    """The compress configuration is malformed."""


@dataclass(frozen=True)
class TeacherConfig:
    onnx: str | None = None
    """BN-folded ONNX export of the teacher to import (e.g. yolox_nano.onnx)."""
    checkpoint: str | None = None
    """Or an official YOLOX checkpoint (.pth with {"model": state_dict})."""
    variant: str = "yolox_nano"
    num_classes: int = 80
    class_names: list[str] | None = None
    """None: COCO names for 80 classes, class_<i> otherwise."""
    input_size: int = 416


@dataclass(frozen=True)
class InputSection:
    """The network input: square ``teacher.input_size`` unless the camera (or an HxW) says otherwise
    (:mod:`prune_perception.compress.input_shape`)."""

    camera: str | None = None
    """The deployment camera's resolution, WxH (e.g. 960x540): the input keeps its aspect."""
    camera_bag: str | None = None
    """Or read the camera resolution from this bag's camera topic."""
    camera_topic: str | None = None
    width: int | None = None
    """Network input width for a camera (default teacher.input_size); the height keeps the aspect,
    rounded up to a multiple of the largest stride."""
    hw: str | None = None
    """Or an explicit network input, HxW (e.g. 256x416)."""


@dataclass(frozen=True)
class ClassesSection:
    keep: list[str | int] | None = None
    """The teacher's classes the students keep (names or indices; null: all). The students predict
    only these; their sidecars record each class's id in the teacher."""


@dataclass(frozen=True)
class LabelledSet:
    """One labelled source: evaluated on its validation split, its training split trained on."""

    name: str
    path: str | list[str]
    """A YOLO images folder (labels in the sibling 'labels' folder) or a COCO json; or a list of
    them, read as one set (e.g. coco128 and a COCO json of more images)."""
    images: str | None = None
    """The images folder of a COCO json (default: 'images' beside the json)."""
    classes: list[str | int] | None = None
    """The teacher classes this set labels (names or indices; null: all). A detection of another
    class is not an error on it: its AP covers these only."""
    agnostic: bool = False
    """Score every labelled class as one (labels that do not tell car, bus and truck apart reliably)."""
    validation_fraction: float = 0.2
    validation_match: str | None = None
    """A regex on image file names: the matching images are the validation split (e.g. one camera
    of several), whatever validation_fraction says."""
    max_validation: int = 0
    """At most this many validation images (0: all), evenly spaced."""
    train: bool = True
    """Train on its training split (images for distillation; labels only where label_weight > 0 and
    the set labels every kept class)."""

    def __post_init__(self) -> None:
        import re

        if not self.name or not self.path:
            raise ValueError("a labelled set needs a name and a path")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"set {self.name}: validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.validation_match is not None:
            try:
                re.compile(self.validation_match)
            except re.error as exc:
                raise ValueError(f"set {self.name}: validation_match is not a regex: {exc}") from exc


@dataclass(frozen=True)
class DataConfig:
    sets: list[LabelledSet] = field(default_factory=list)
    """Labelled sources, each with its own classes and validation split (the driving recipe).
    ``labelled``/``coco_json`` below is the one-set shorthand."""
    labelled: str | None = None
    """Images folder of a YOLO-txt dataset (labels in the sibling 'labels' folder)."""
    coco_json: str | None = None
    """Or a COCO json (then 'labelled' is its images folder)."""
    validation_fraction: float = 0.25
    max_labelled: int = 0
    unlabelled: list[str] = field(default_factory=list)
    """Image folders, videos and rosbag2 bags for distillation (and teacher-fidelity evaluation)."""
    unlabelled_max_frames: int = 200
    unlabelled_stride: int = 1
    bag_topic: str | None = None
    fidelity_frames: int = 40
    """Frames of the unlabelled sources kept out of training to measure fidelity to the teacher."""
    fidelity_sources: list[str] = field(default_factory=list)
    """Videos, folders or bags used only for fidelity (never trained on); ``fidelity_frames`` of
    them, evenly spaced. Empty: the last frames of ``unlabelled`` are held out instead."""

    def __post_init__(self) -> None:
        parsed = []
        for index, item in enumerate(self.sets):
            if isinstance(item, LabelledSet):
                parsed.append(item)
                continue
            parsed.append(_build(LabelledSet, item, f"data.sets[{index}]."))
        names = [item.name for item in parsed]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sets names must be distinct, got {names}")
        if parsed and (self.labelled or self.coco_json):
            raise ValueError("give data.sets or data.labelled/coco_json, not both")
        object.__setattr__(self, "sets", parsed)


@dataclass(frozen=True)
class PruneSection:
    importance: str = "energy"
    """l1 | l2 | bn_scale | taylor | energy (output variance lost, on calibration images)."""
    ratios: list[float] = field(default_factory=lambda: [0.3])
    """One student per channel ratio: the sweep gives the accuracy/latency Pareto front."""
    macs_fraction: float | None = None
    params_fraction: float | None = None
    target_speedup: float | list[float] | None = None
    """Or one student per speed-up target (a number or a list: the Pareto sweep), pruned until its
    measured speed-up over the teacher at the run's input reaches it."""
    latency_backend: str = "onnxruntime"
    """Where target_speedup is measured: onnxruntime (CPU, evaluate.latency_threads) or torch (on ``device``)."""
    latency_search_step: float = 0.05
    latency_refine_points: int = 6
    """Uniform target_speedup: ratios pruned afresh and timed between the search step that missed the
    target and the one that overshot it (those the channel rounding maps onto channels already timed
    are skipped); the least pruned that reaches it is kept (0: keep the step, however far it overshot)."""
    latency_repeats: int = 5
    """A timing within ``latency_noise_margin`` of the target is repeated this many times in all, and
    the step reaches the target when the target lies within the 95% interval of their mean."""
    latency_noise_margin: float = 0.05
    channels_from: str | None = None
    """Pin the architecture: prune exactly as the ``pruning.json`` of an earlier run records (its
    ratio or per-layer allocation), check that every layer gets the channels recorded there, and skip
    the speed-up search, so that a team retrains the same model."""
    method: str = "prune_perception"
    """Who chooses the channels: ``prune_perception`` (this package: importance, compensation, the
    speed-up search, the refit) or a peer it is measured against, at ``macs_fraction`` and recovered
    the same way: ``torch_pruning`` (Torch-Pruning's progressive MetaPruner, group L2 magnitude) or
    ``modelopt_fastnas`` (NVIDIA Model Optimizer's FastNAS search). See :mod:`compress.peers`."""
    peer_iterative_steps: int = 100
    """``torch_pruning``: the resolution of its progressive schedule (each step removes 1/N of the
    channels and re-ranks the rest)."""
    global_pruning: bool = False
    iterative_steps: int = 1
    round_to: int = 8
    max_layer_ratio: float = 0.9
    mean_compensation: bool = True
    """Fold the average of every removed channel into the layers that read it
    (:mod:`prune_perception.compress.channel_statistics`)."""
    reconstruct: bool = True
    """Refit every pruned layer to the teacher by least squares before training
    (:mod:`prune_perception.compress.reconstruct`)."""
    calibration_images: int = 32
    """Images for the channel statistics (compensation, energy) and the least-squares refit."""
    sparsity: str | int | None = None  # int: YAML 1.1 reads an unquoted 2:4 as 124 (see __post_init__)
    """Also one sparse student (dense shapes, teacher's channels): 2:4 or unstructured (null: none)."""
    sparsity_amount: float = 0.5
    """Zero fraction of unstructured sparsity (2:4 is always half)."""
    allocation: str = "uniform"
    """How target_speedup spreads the cut: ``uniform`` (the same channel ratio everywhere, stepped
    until the measured speed-up reaches the target) or ``latency`` (per-group channel counts from a
    sensitivity scan and a per-layer latency table, at the least estimated damage:
    :mod:`prune_perception.compress.allocation`)."""
    sensitivity_ratios: list[float] = field(default_factory=lambda: [0.3, 0.6])
    """The ratios at which the scan probes each dependency group."""
    sensitivity_images: int = 8
    """Calibration images of the scan."""
    drop_blocks: int = 0
    """Remove this many residual blocks first, the gentlest by measured output damage ..."""
    drop_block_names: list[str] = field(default_factory=list)
    """... or these (e.g. backbone.backbone.dark4.1.m.0)."""

    def __post_init__(self) -> None:
        from prune_perception.compress.peers import PRUNE_METHODS
        from prune_perception.compress.sparsity import SPARSITY_MODES

        if self.allocation not in ("uniform", "latency"):
            raise ValueError(f"allocation must be uniform or latency, got {self.allocation!r}")
        if self.allocation == "latency" and not self.target_speedup:
            raise ValueError("allocation latency needs target_speedup (the measured speed-up to reach)")
        if self.drop_blocks < 0 or (self.drop_blocks and self.drop_block_names):
            raise ValueError("give drop_blocks (a count >= 0) or drop_block_names, not both")
        if not self.sensitivity_ratios or not all(0 < r < 1 for r in self.sensitivity_ratios):
            raise ValueError(f"sensitivity_ratios must be in (0, 1), got {self.sensitivity_ratios}")

        if self.calibration_images < 1:
            raise ValueError("calibration_images must be >= 1")
        if self.importance == "energy" and not self.mean_compensation:
            raise ValueError("importance energy ranks channels as they cost after mean compensation: "
                             "keep mean_compensation true")
        if self.sparsity == 2 * 60 + 4:  # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124
            object.__setattr__(self, "sparsity", "2:4")
        if self.latency_backend not in ("onnxruntime", "torch"):
            raise ValueError(f"latency_backend must be onnxruntime or torch, got {self.latency_backend!r}")
        if self.sparsity is not None and self.sparsity not in SPARSITY_MODES:
            raise ValueError(f"sparsity must be one of {SPARSITY_MODES} or null, got {self.sparsity!r}")
        if not 0 < self.sparsity_amount < 1:
            raise ValueError(f"sparsity_amount must be in (0, 1), got {self.sparsity_amount}")
        if not self.targets():
            raise ValueError("set ratios, macs_fraction, params_fraction or target_speedup")
        if self.channels_from is not None and len(self.targets()) != 1:
            raise ValueError("channels_from pins one architecture: give one target (one ratio or speed-up)")
        if self.method not in PRUNE_METHODS:
            raise ValueError(f"method must be one of {PRUNE_METHODS}, got {self.method!r}")
        if self.method != "prune_perception" and (not self.macs_fraction or self.channels_from or self.sparsity
                                                   or self.drop_blocks or self.drop_block_names):
            raise ValueError(f"method {self.method} prunes to macs_fraction (set it), without channels_from, "
                             "sparsity or dropped blocks: it is compared with ours at equal MACs")
        if self.peer_iterative_steps < 1:
            raise ValueError("peer_iterative_steps must be >= 1")
        if self.latency_repeats < 1 or not 0 <= self.latency_noise_margin < 1:
            raise ValueError("latency_repeats must be >= 1 and latency_noise_margin in [0, 1)")
        for target in self.targets():
            self.prune_config(target)  # validates every student's settings now, not mid-run

    def speedups(self) -> list[float]:
        """The speed-up targets (empty unless target_speedup is set)."""
        if self.target_speedup is None:
            return []
        values = self.target_speedup if isinstance(self.target_speedup, (list, tuple)) else [self.target_speedup]
        return [float(value) for value in values]

    def targets(self) -> list[float | None]:
        """One entry per student: the channel ratios of the sweep, the speed-up targets, or [None] for
        a single MACs/params-targeted student."""
        if self.macs_fraction or self.params_fraction:
            return [None]
        return self.speedups() or list(self.ratios)

    def target_label(self, target: float | None) -> str:
        """The output folder of the student pruned for ``target`` (see :meth:`targets`)."""
        if self.target_speedup is not None:
            return f"speedup_{target:.2f}"
        if target is not None:
            return f"ratio_{target:.2f}"
        if self.macs_fraction:
            return f"macs_{self.macs_fraction:.2f}"
        return f"params_{self.params_fraction:.2f}"

    def channel_ratio_of(self, target: float | None) -> float | None:
        """The fixed channel ratio of a student, or None where pruning searches for it."""
        return target if self.target_speedup is None and not (self.macs_fraction or self.params_fraction) else None

    def sparse_label(self) -> str | None:
        """The output folder of the sparse student, if one is asked for."""
        if self.sparsity is None:
            return None
        return "sparse_2to4" if self.sparsity == "2:4" else f"sparse_{self.sparsity_amount:.2f}"

    def prune_config(self, target: float | None):
        from prune_perception.compress.prune import PruneConfig

        return PruneConfig(
            importance=self.importance, channel_ratio=self.channel_ratio_of(target), macs_fraction=self.macs_fraction,
            params_fraction=self.params_fraction, target_speedup=target if self.target_speedup is not None else None,
            latency_search_step=self.latency_search_step,
            latency_refine_points=self.latency_refine_points, global_pruning=self.global_pruning,
            iterative_steps=self.iterative_steps, round_to=self.round_to, max_layer_ratio=self.max_layer_ratio,
        )


@dataclass(frozen=True)
class EvaluateSection:
    latency_runs: int = 50
    latency_warmup: int = 5
    latency_threads: int = 0
    max_validation_images: int = 0


@dataclass(frozen=True)
class ExportSection:
    decode_in_graph: bool = False
    int8: bool = True
    int8_calibration_images: int = 32
    int8_method: str = "minmax"
    int8_target_score_cosine: float = 0.99
    int8_max_float_fraction: float = 0.3
    modelopt_int8: bool = False
    """Also TensorRT-targeted Q/DQ INT8 through NVIDIA ModelOpt (in a subprocess; skipped if not installed)."""
    modelopt_calibration: str = "entropy"
    """entropy | max"""
    tensorrt: bool = True
    """Build TensorRT engines where TensorRT is installed (skipped with a message elsewhere)."""
    tensorrt_precision: str = "fp16"
    tensorrt_workspace_mb: int = 2048
    max_batch: int = 1
    """The cameras one model call serves: above 1, the ONNX files get a dynamic batch axis and the
    engines an optimization profile up to this batch (a multi-camera detector_node)."""

    def __post_init__(self) -> None:
        from prune_perception.export.modelopt_int8 import MODELOPT_CALIBRATION_METHODS

        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

        if self.modelopt_calibration not in MODELOPT_CALIBRATION_METHODS:
            raise ValueError(f"modelopt_calibration must be one of {MODELOPT_CALIBRATION_METHODS}, "
                             f"got {self.modelopt_calibration!r}")


@dataclass(frozen=True)
class DistillSection(DistillConfig):
    """The distillation loss's weights (:class:`DistillConfig`), and an optional second teacher."""

    teacher: str | None = None
    """A stronger detector file (ONNX of any family the runtime decodes, e.g. an Ultralytics
    YOLOv8 export), used only as a source of pseudo-labels, computed once per run and cached
    (:mod:`prune_perception.compress.distill_teacher`). The teacher of record stays ``teacher``.
    Its boxes enter the label loss, so set ``train.label_weight`` above 0."""
    teacher_score_threshold: float = 0.4
    """The least score a detection of the second teacher needs to become a pseudo-label."""
    pseudo_label_sets: bool = True
    """Label the classes a labelled set does not label with the second teacher's boxes."""
    pseudo_label_frames: bool = True
    """Label the unlabelled frames with the second teacher's boxes (every kept class)."""

    def __post_init__(self) -> None:
        if not 0 < self.teacher_score_threshold < 1:
            raise ValueError(f"distill.teacher_score_threshold must be in (0, 1), got {self.teacher_score_threshold}")


@dataclass(frozen=True)
class CompressConfig:
    output_dir: str = "runs/compress"
    seed: int = 0
    device: str = "cpu"
    teacher: TeacherConfig = TeacherConfig()
    input: InputSection = InputSection()
    classes: ClassesSection = ClassesSection()
    data: DataConfig = DataConfig()
    prune: PruneSection = PruneSection()
    train: TrainConfig = TrainConfig()
    distill: DistillSection = DistillSection()
    augment: AugmentConfig = AugmentConfig()
    evaluate: EvaluateSection = EvaluateSection()
    export: ExportSection = ExportSection()


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.') or 'the configuration'} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(where + k for k in unknown)}; valid: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    arguments = {}
    for name, value in values.items():
        default = _field_default(fields[name])
        if dataclasses.is_dataclass(default):
            arguments[name] = _build(type(default), value or {}, f"{where}{name}.")
            continue
        value = _typed(value, hints[name], f"{where}{name}")
        arguments[name] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    try:
        return cls(**arguments)
    except (TypeError, ValueError, PrunePerceptionError) as exc:
        raise ConfigError(f"{where.rstrip('.') or 'configuration'}: {exc}") from exc


def _typed(value: Any, hint: Any, name: str) -> Any:
    """``value`` if it fits the option's annotation (an int for a float, a number written as text
    such as 5e-3 for a float, a list for a tuple); otherwise a :class:`ConfigError` naming it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _typed(value, option, name)
            except ConfigError:
                continue
        raise ConfigError(f"{name} must be {' or '.join(_describe(option) for option in args)}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
                raise ConfigError(f"{name} must have {len(args)} items, got {len(value)}")
            items = args if origin is tuple and args and args[-1] is not Ellipsis else [args[0] if args else Any] * len(value)
            return [_typed(item, item_hint, f"{name}[{index}]") for index, (item, item_hint) in enumerate(zip(value, items))]
    elif dataclasses.is_dataclass(hint):  # e.g. one labelled set: built by its section from a mapping
        if isinstance(value, (dict, hint)):
            return value
    else:
        return value
    raise ConfigError(f"{name} must be {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return "a list"
    return f"a {getattr(hint, '__name__', str(hint))}"


def _field_default(item: dataclasses.Field) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """``section.key=value`` (value parsed as YAML) into the raw configuration mapping."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    path, text = assignment.split("=", 1)
    keys = path.strip().split(".")
    target = data
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {assignment!r}: {key} is not a section")
    try:
        target[keys[-1]] = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"override {assignment!r}: the value is not valid YAML ({exc})") from exc


def load_compress_config(path: str | Path | None, overrides: list[str] = ()) -> CompressConfig:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (teacher:, data:, ...), not a {type(data).__name__}")
    for assignment in overrides:
        apply_override(data, assignment)
    return _build(CompressConfig, data, "")


def config_to_dict(config: CompressConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
