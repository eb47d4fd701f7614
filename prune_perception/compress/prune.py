"""Structured channel pruning with Torch-Pruning's dependency graph.

Whole channels are removed from convolutions (and everything coupled to them: BatchNorms,
concatenations, residual adds, depthwise convs), so the pruned model is a smaller dense model
that really runs faster, unlike masks. Channel counts are rounded to multiples of ``round_to``
(8: tensor-core friendly), and the head's output convolutions are never pruned.

Example:
    >>> result = prune_model(model, PruneConfig(importance="l2", channel_ratio=0.3), torch.zeros(1, 3, 416, 416))
    >>> result.macs_after / result.macs_before
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch_pruning as tp
from torch import nn

from prune_perception.compress.channel_statistics import ActivationEnergyImportance, ChannelStatistics
from prune_perception.compress.speedup_measurement import SpeedupMeasurement, as_measurement
from prune_perception.errors import PrunePerceptionError
from prune_perception.models.hooks import hooked_eval

LOGGER = logging.getLogger(__name__)
IMPORTANCE_CRITERIA = ("l1", "l2", "bn_scale", "taylor", "energy")
class PruningError(PrunePerceptionError):
    """The pruning request cannot be met or is malformed."""


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how far. Set exactly one target.

    Attributes:
        importance: ``l1`` / ``l2`` (weight magnitude), ``bn_scale`` (|gamma| of the following
            BatchNorm), ``taylor`` (|weight x gradient| of a data loss; needs ``loss_fn``) or
            ``energy`` (the output variance a channel's removal costs its consumers, measured on
            calibration images: :mod:`channel_statistics`; needs ``calibration``).
        channel_ratio: remove this fraction of the channels (of each layer, or of all with
            ``global_pruning``).
        macs_fraction: prune until at most this fraction of the MACs is left.
        params_fraction: prune until at most this fraction of the parameters is left.
        target_speedup: prune until the *measured* speed-up over the unpruned model reaches this
            (e.g. 1.5), stepping by ``latency_search_step`` of channel ratio and timing the model
            after every step with the ``measure_speedup`` callback of :func:`prune_model` (the
            backend that will run it). FLOPs that fall without the latency falling do not count.
        latency_refine_points: for ``target_speedup`` through :func:`prune_to_speedup`: this many
            channel ratios evenly between the last step that missed the target and the one that
            reached it are pruned afresh and timed, and the least pruned that reaches it is kept
            (0: keep the step that reached it, however far it overshot).
        iterative_steps: for ``channel_ratio``, reach it in this many steps (a callback may
            fine-tune between them). MACs/params targets always step in ``search_step`` increments.
        max_layer_ratio: no layer loses more than this fraction of its channels.
        layer_ratios: per dependency group, named by its root convolution, the fraction of its
            channels to remove (the other groups are left whole): a latency-aware allocation
            (:mod:`allocation`).
    """

    importance: str = "l2"
    channel_ratio: float | None = None
    macs_fraction: float | None = None
    params_fraction: float | None = None
    target_speedup: float | None = None
    global_pruning: bool = False
    iterative_steps: int = 1
    round_to: int = 8
    max_layer_ratio: float = 0.9
    search_step: float = 0.02
    latency_search_step: float = 0.05
    latency_refine_points: int = 3
    layer_ratios: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCE_CRITERIA:
            raise PruningError(f"importance must be one of {IMPORTANCE_CRITERIA}, got {self.importance!r}")
        targets = [t for t in (self.channel_ratio, self.macs_fraction, self.params_fraction, self.target_speedup,
                               self.layer_ratios) if t is not None]
        if len(targets) != 1:
            raise PruningError("set exactly one of channel_ratio, macs_fraction, params_fraction, target_speedup, "
                               "layer_ratios")
        for name, ratio in (self.layer_ratios or {}).items():
            if not 0 <= ratio < 1:
                raise PruningError(f"layer_ratios[{name!r}] must be in [0, 1), got {ratio}")
        if self.target_speedup is not None and not self.target_speedup > 1:
            raise PruningError(f"target_speedup must be > 1, got {self.target_speedup}")
        if not 0 < self.latency_search_step < 1:
            raise PruningError(f"latency_search_step must be in (0, 1), got {self.latency_search_step}")
        if self.channel_ratio is not None and not 0 < self.channel_ratio < 1:
            raise PruningError(f"channel_ratio must be in (0, 1), got {self.channel_ratio}")
        for name in ("macs_fraction", "params_fraction"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise PruningError(f"{name} must be in (0, 1), got {value}")
        if self.iterative_steps < 1 or self.round_to < 1:
            raise PruningError("iterative_steps and round_to must be >= 1")
        if self.latency_refine_points < 0:
            raise PruningError(f"latency_refine_points must be >= 0, got {self.latency_refine_points}")


@dataclass
class PrunedSize:
    """A pruned model's MACs and parameters against the model it was pruned from."""

    macs_before: int
    macs_after: int
    params_before: int
    params_after: int

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / self.macs_before

    @property
    def params_fraction(self) -> float:
        return self.params_after / self.params_before


@dataclass
class PruneResult(PrunedSize):
    steps: int
    channel_ratio: float
    """The per-layer (or global) channel ratio the pruner reached."""
    history: list[dict[str, float]] = field(default_factory=list)
    kept_output_channels: dict[str, list[int]] = field(default_factory=dict)
    """Per Conv2d name, the original indices of its remaining output channels (the teacher's
    channels each student channel came from: what :mod:`reconstruct` fits them to)."""
    refinement: list[dict[str, float]] = field(default_factory=list)
    """For a speed-up target: the ratios :func:`prune_to_speedup` tried between the last two steps."""
    measured_speedup: float | None = None
    """For a speed-up target: the measured speed-up of the model returned."""


def make_importance(name: str, statistics: ChannelStatistics | None = None) -> Any:
    if name == "energy":
        if statistics is None:
            raise PruningError("energy importance needs calibration images")
        return ActivationEnergyImportance(statistics)
    return {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
    }[name]()


def protected_layers(model: nn.Module, round_to: int = 1) -> list[nn.Module]:
    """Layers whose output channels are never pruned.

    - The head's output convolutions (class, box, objectness): their channels are the output format.
    - Convolutions with at most ``2 * round_to`` output channels: rounding a pruned count to a
      multiple of ``round_to`` would remove half of them (YOLOX-Nano's 16-channel layers would
      drop to 8 at any ratio; measured: AP 0.43 -> 0.002 at a 10% ratio).
    """
    head = getattr(model, "head", None)
    if head is None:
        raise PruningError(f"{type(model).__name__} has no .head; name the layers to protect")
    outputs = [conv for name in ("cls_preds", "reg_preds", "obj_preds") for conv in getattr(head, name)]
    narrow = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels <= 2 * round_to and m not in outputs]
    return outputs + narrow


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    with hooked_eval(model, ()):
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


def prune_model(
    model: nn.Module,
    config: PruneConfig,
    example_inputs: torch.Tensor,
    loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
    between_steps: Callable[[int, nn.Module], None] | None = None,
    measure_speedup: Callable[[nn.Module], float | SpeedupMeasurement] | None = None,
    calibration: torch.Tensor | None = None,
) -> PruneResult:
    """Prune ``model`` in place.

    Args:
        example_inputs: a batch the model accepts (traced to build the dependency graph).
        loss_fn: for ``taylor`` importance: computes a differentiable loss of ``model`` on data.
        between_steps: called after every pruning step with (step, model), e.g. to fine-tune.
        measure_speedup: for ``target_speedup``: times ``model`` against the unpruned one on the
            target backend and returns the speed-up (unpruned latency / pruned latency), or a
            :class:`SpeedupMeasurement` of repeated timings, which reaches the target when the
            target lies within its confidence interval.
        calibration: images ``[N, 3, H, W]`` (16-32 are enough). With them, the average of every
            removed channel is folded into the layers that read it (mean compensation), and the
            ``energy`` importance can be used. Without them, channels are simply cut.
    """
    if config.importance == "taylor" and loss_fn is None:
        raise PruningError("taylor importance needs a loss_fn computed on data")
    if config.target_speedup is not None and measure_speedup is None:
        raise PruningError("target_speedup needs a measure_speedup callback that times the model")
    statistics = ChannelStatistics(calibration) if calibration is not None else None
    importance = make_importance(config.importance, statistics)  # before tracing: a bad choice fails early
    macs_before, params_before = count_macs_params(model, example_inputs)
    was_training = model.training
    model.eval()  # tracing must not update BatchNorm statistics with the example input
    ratio_dict = None
    if config.layer_ratios is not None:
        modules = dict(model.named_modules())
        unknown = sorted(set(config.layer_ratios) - set(modules))
        if unknown:
            raise PruningError(f"layer_ratios names layers the model does not have: {', '.join(unknown[:5])}")
        ratio, steps = 0.0, 1
        ratio_dict = {modules[name]: value for name, value in config.layer_ratios.items()}
    elif config.channel_ratio is not None:
        ratio, steps = config.channel_ratio, config.iterative_steps
    else:
        ratio = config.max_layer_ratio
        step_size = config.latency_search_step if config.target_speedup is not None else config.search_step
        steps = max(1, round(ratio / step_size))
    pruner = tp.pruner.BasePruner(
        model, example_inputs, importance=importance, global_pruning=config.global_pruning,
        pruning_ratio=ratio, max_pruning_ratio=config.max_layer_ratio, iterative_steps=steps,
        ignored_layers=protected_layers(model, config.round_to), round_to=config.round_to,
        pruning_ratio_dict=ratio_dict,
    )
    history = []
    reached = 0.0
    conv_names = {module: name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    kept = {name: list(range(module.out_channels)) for module, name in conv_names.items()}
    original = {name: len(indices) for name, indices in kept.items()}
    for step in range(steps):
        if config.importance == "taylor":
            model.zero_grad()
            loss_fn(model).backward()
        if statistics is not None:
            statistics.measure(model)
        for group in pruner.step(interactive=True):
            if statistics is not None:
                statistics.compensate(group)
            _track_removed_channels(group, conv_names, kept)
            group.prune()
        reached = ratio * (step + 1) / steps
        macs, params = count_macs_params(model, example_inputs)
        record = {"step": step + 1, "channel_ratio": reached, "macs": macs, "params": params}
        reached_target = False
        if config.target_speedup is not None:
            measurement = as_measurement(measure_speedup(model))
            record.update(measurement.to_dict())
            reached_target = measurement.reaches(config.target_speedup)
            model.eval()
        history.append(record)
        LOGGER.info("pruning step %d/%d: channel ratio %.2f, MACs %.1f%%, params %.1f%%%s",
                    step + 1, steps, reached, 100 * macs / macs_before, 100 * params / params_before,
                    f", measured speed-up {record['speedup']:.2f}x" if "speedup" in record else "")
        if between_steps is not None:
            between_steps(step, model)
            model.eval()
        if config.macs_fraction is not None and macs <= config.macs_fraction * macs_before:
            break
        if config.params_fraction is not None and params <= config.params_fraction * params_before:
            break
        if reached_target:
            break
    else:
        if config.channel_ratio is None and config.layer_ratios is None:
            measured = f", measured speed-up {record['speedup']:.2f}x" if "speedup" in record else ""
            raise PruningError(
                f"could not reach the target with at most {config.max_layer_ratio:.0%} of each layer pruned "
                f"(reached MACs {macs / macs_before:.1%}, params {params / params_before:.1%}{measured})"
            )
    if config.layer_ratios is not None:  # the share of all conv output channels the allocation removed
        reached = 1 - sum(len(kept[name]) for name in original) / sum(original.values())
        history[-1]["channel_ratio"] = reached
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    macs_after, params_after = count_macs_params(model, example_inputs)
    return PruneResult(macs_before, macs_after, params_before, params_after, len(history), reached, history, kept)


def prune_to_speedup(
    build: Callable[[], nn.Module],
    config: PruneConfig,
    example_inputs: torch.Tensor,
    measure_speedup: Callable[[nn.Module], float | SpeedupMeasurement],
    loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
    calibration: torch.Tensor | None = None,
) -> tuple[nn.Module, PruneResult]:
    """Prune a model from ``build()`` until its measured speed-up reaches ``config.target_speedup``,
    without overshooting it by a whole search step.

    The search steps the channel ratio by ``latency_search_step``. Latency does not fall smoothly
    with the channel count (kernels change at multiples of the rounding), so the step that reaches
    the target can overshoot it: at 416x416 the shared YOLOX-Nano went from 1.37x at ratio 0.35 to
    1.64x at 0.40 against a 1.5x target. Then ``latency_refine_points`` ratios between the two are
    each pruned afresh from ``build()`` in as many iterative steps and timed; the least pruned that
    reaches the target replaces the step's model. Returns the model and its result.
    """
    if config.target_speedup is None:
        raise PruningError("prune_to_speedup needs target_speedup")
    model = build()
    result = prune_model(model, config, example_inputs, loss_fn=loss_fn, measure_speedup=measure_speedup,
                         calibration=calibration)
    result.measured_speedup = result.history[-1]["speedup"]
    if config.latency_refine_points == 0 or len(result.history) < 2:
        return model, result
    low, high = result.history[-2]["channel_ratio"], result.history[-1]["channel_ratio"]
    trials: list[dict[str, float]] = []
    for point in range(1, config.latency_refine_points + 1):
        ratio = low + (high - low) * point / (config.latency_refine_points + 1)
        fixed = replace(config, target_speedup=None, channel_ratio=ratio, iterative_steps=len(result.history))
        candidate = build()
        trial = prune_model(candidate, fixed, example_inputs, loss_fn=loss_fn, calibration=calibration)
        if trial.macs_after <= result.macs_after:
            break  # as pruned as the step that reached the target: the points above cannot be less
        if trial.macs_after >= result.history[-2]["macs"] or any(t["macs"] == trial.macs_after for t in trials):
            continue  # the channels of the step that missed, or of a ratio just timed (the rounding absorbed it)
        measurement = as_measurement(measure_speedup(candidate))
        candidate.eval()
        trials.append({"channel_ratio": ratio, "macs": trial.macs_after, "params": trial.params_after,
                       **measurement.to_dict()})
        LOGGER.info("refining between ratios %.3f and %.3f: ratio %.3f, MACs %.1f%%, measured speed-up %.2fx",
                    low, high, ratio, 100 * trial.macs_fraction, measurement.speedup)
        if measurement.reaches(config.target_speedup):
            return candidate, replace(trial, history=result.history, refinement=trials,
                                      measured_speedup=measurement.speedup)
    result.refinement = trials
    return model, result


def conv_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution, by module name: the architecture a pruning gives."""
    return {name: module.out_channels for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}


def layer_ratios_for(model: nn.Module, channels: dict[str, int]) -> dict[str, float]:
    """The ``layer_ratios`` that prune ``model``'s convolutions to ``channels`` (output channels by
    conv name, as :func:`conv_channels` gives them): e.g. the architecture a peer searched, pruned
    with this package's importance and compensation. Layers the record leaves whole get none.

    Raises:
        PruningError: a layer the model lacks, or a count above the layer's own.
    """
    current = conv_channels(model)
    unknown = sorted(set(channels) - set(current))
    if unknown:
        raise PruningError(f"the recorded channels name layers the model does not have: {', '.join(unknown[:5])}")
    wider = [name for name, count in channels.items() if count > current[name] or count < 1]
    if wider:
        raise PruningError(f"the recorded channels do not fit the model: {wider[0]} has {current[wider[0]]}, "
                           f"recorded {channels[wider[0]]}")
    return {name: 1 - count / current[name] for name, count in channels.items() if count < current[name]}


def reproducible_prune_config(config: PruneConfig, result: PruneResult) -> dict[str, Any]:
    """The fixed pruning that gives ``result``'s model again without any timing: a speed-up
    search's last step is the channel ratio it reached in as many iterative steps."""
    fixed: dict[str, Any] = {"importance": config.importance, "round_to": config.round_to,
                             "max_layer_ratio": config.max_layer_ratio, "global_pruning": config.global_pruning}
    if config.layer_ratios is not None:
        return {**fixed, "layer_ratios": dict(config.layer_ratios)}
    if config.channel_ratio is not None:
        return {**fixed, "channel_ratio": config.channel_ratio, "iterative_steps": config.iterative_steps}
    return {**fixed, "channel_ratio": result.channel_ratio, "iterative_steps": max(1, result.steps)}


def pinned_prune_config(record: dict[str, Any], section: Any) -> PruneConfig:
    """The :class:`PruneConfig` that a ``pruning.json`` record's ``reproduce`` entry names (or, in a
    record written before it existed, its uniform ratio and step count).

    Raises:
        PruningError: a record that does not say how to reproduce it.
    """
    fixed = record.get("reproduce")
    if fixed is None:
        if record.get("allocation", "uniform") != "uniform" or "channel_ratio" not in record:
            raise PruningError("this pruning.json does not record how to reproduce its allocation; prune once "
                               "with this version to write one that does")
        fixed = {"importance": section.importance, "round_to": section.round_to,
                 "max_layer_ratio": section.max_layer_ratio, "channel_ratio": record["channel_ratio"],
                 "iterative_steps": max(1, len(record.get("steps", [])))}
    try:
        return PruneConfig(**fixed)
    except TypeError as exc:
        raise PruningError(f"pruning.json 'reproduce' is malformed: {exc}") from exc


def _track_removed_channels(group: Any, conv_names: dict[nn.Module, str], kept: dict[str, list[int]]) -> None:
    for dependency, indices in group:
        module = dependency.target.module
        if module in conv_names and getattr(dependency.handler, "__name__", "") == "prune_out_channels":
            removed = {int(getattr(index, "idx", index)) for index in indices}
            name = conv_names[module]
            kept[name] = [original for position, original in enumerate(kept[name]) if position not in removed]
