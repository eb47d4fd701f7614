"""Structured pruning of the real YOLOX-Nano with Torch-Pruning."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from prune_perception.compress.prune import (
    PruneConfig,
    PruningError,
    conv_channels,
    count_macs_params,
    pinned_prune_config,
    prune_model,
    prune_to_speedup,
    reproducible_prune_config,
)
from prune_perception.compress.speedup_measurement import SpeedupMeasurement, repeat_close_calls
from prune_perception.export.onnx_export import export_onnx
from prune_perception.models.pruned_checkpoint import save_pruned_checkpoint
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.runtime.backends.torch_backend import TorchBackend
from prune_perception.runtime.class_names import COCO_CLASSES
from prune_perception.runtime.detector import Detector
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor

EXAMPLE = torch.zeros(1, 3, 416, 416)
SPEC = InputSpec(width=416, height=416)


@pytest.fixture(scope="module")
def nano_state(yolox_nano_path):
    return load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).state_dict()


def fresh_nano(state):
    model = build_yolox("yolox_nano")
    model.load_state_dict(state)
    return model


def prunable_channels(model):
    return [m.out_channels for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and "_preds" not in name]


@pytest.fixture(scope="module")
def real_sample(coco128_dir):
    image = cv2.imread(str(sorted((coco128_dir / "images").glob("*.jpg"))[1]))
    return image, Preprocessor(SPEC)(image)[0]


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.5])
def test_pruning_ratios_shrink_the_model_and_export(nano_state, real_sample, tmp_path, ratio):
    model = fresh_nano(nano_state)
    result = prune_model(model, PruneConfig(importance="l2", channel_ratio=ratio), EXAMPLE)
    assert result.macs_after < result.macs_before and result.params_after < result.params_before
    assert result.params_fraction < 1 - ratio + 0.15  # channels removed in pairs of layers: params fall ~quadratically
    assert all(channels % 8 == 0 for channels in prunable_channels(model))
    head = model.head
    assert [c.out_channels for c in head.cls_preds] == [80] * 3 and [c.out_channels for c in head.reg_preds] == [4] * 3
    model.eval()
    assert model(EXAMPLE).shape == (1, 3549, 85)

    image, sample = real_sample
    exported = export_onnx(model, tmp_path / "pruned.onnx", COCO_CLASSES, SPEC, sample_inputs=[sample])
    assert exported.relative_diff <= 1e-4
    detections = Detector(exported.path, device="cpu").detect(image).detections  # runs in the runtime
    assert detections.boxes_xyxy.shape[1] == 4


def test_deeper_pruning_removes_more(nano_state):
    fractions = []
    for ratio in (0.2, 0.3, 0.5):
        model = fresh_nano(nano_state)
        fractions.append(prune_model(model, PruneConfig(channel_ratio=ratio), EXAMPLE).macs_fraction)
    assert fractions == sorted(fractions, reverse=True)


def test_macs_target_is_met_without_overshooting(nano_state):
    model = fresh_nano(nano_state)
    result = prune_model(model, PruneConfig(importance="l1", macs_fraction=0.6), EXAMPLE)
    assert 0.45 < result.macs_fraction <= 0.6
    assert result.history and result.history[-1]["macs"] == result.macs_after


@pytest.mark.parametrize("importance", ["bn_scale", "taylor"])
def test_other_importance_criteria(nano_state, real_sample, importance):
    model = fresh_nano(nano_state)
    teacher = fresh_nano(nano_state).eval()
    sample = torch.from_numpy(real_sample[1])

    def loss_fn(student):
        with torch.no_grad():
            targets = (teacher(sample)[..., 4:] > 0.3).float()  # teacher's confident scores as labels
        return torch.nn.functional.binary_cross_entropy(student(sample)[..., 4:].clamp(1e-6, 1 - 1e-6), targets)

    result = prune_model(model, PruneConfig(importance=importance, channel_ratio=0.3, iterative_steps=2), EXAMPLE,
                         loss_fn=loss_fn if importance == "taylor" else None)
    assert result.steps == 2 and result.macs_fraction < 0.7
    assert all(channels % 8 == 0 for channels in prunable_channels(model))


def test_global_pruning_and_between_steps_callback(nano_state):
    model = fresh_nano(nano_state)
    seen = []
    result = prune_model(model, PruneConfig(channel_ratio=0.3, global_pruning=True, iterative_steps=3), EXAMPLE,
                         between_steps=lambda step, m: seen.append((step, m.training)))
    assert [step for step, _ in seen] == [0, 1, 2] and result.macs_fraction < 0.8


def test_pruned_checkpoint_round_trips_through_the_torch_backend(nano_state, real_sample, tmp_path):
    model = fresh_nano(nano_state)
    prune_model(model, PruneConfig(channel_ratio=0.3), EXAMPLE)
    model.eval()
    path = tmp_path / "pruned.pt"
    save_pruned_checkpoint(path, model, "prune_perception.models.yolox:build_yolox", {"variant": "yolox_nano"})
    backend = TorchBackend(path, device="cpu")  # loads with weights_only=True
    sample = real_sample[1]
    with torch.no_grad():
        np.testing.assert_array_equal(backend.infer(sample), model(torch.from_numpy(sample)).numpy())


def test_bad_pruning_requests():
    with pytest.raises(PruningError, match="exactly one"):
        PruneConfig(channel_ratio=0.3, macs_fraction=0.5)
    with pytest.raises(PruningError, match="importance"):
        PruneConfig(importance="random", channel_ratio=0.3)
    with pytest.raises(PruningError, match="channel_ratio"):
        PruneConfig(channel_ratio=1.5)
    with pytest.raises(PruningError, match="taylor importance needs a loss_fn"):
        prune_model(build_yolox("yolox_nano"), PruneConfig(importance="taylor", channel_ratio=0.2), EXAMPLE)


def test_latency_target_prunes_in_steps_until_the_measure_reaches_it(nano_state):
    """The search loop itself, with a deterministic measure (the MACs ratio); the compress test
    runs it with real onnxruntime timings."""
    measured = []

    def macs_speedup(model):
        macs, _ = count_macs_params(model, EXAMPLE)
        measured.append(teacher_macs / macs)
        return measured[-1]

    teacher_macs, _ = count_macs_params(fresh_nano(nano_state), EXAMPLE)
    model = fresh_nano(nano_state)
    result = prune_model(model, PruneConfig(target_speedup=1.6, latency_search_step=0.1), EXAMPLE,
                         measure_speedup=macs_speedup)
    speedups = [step["speedup"] for step in result.history]
    assert speedups == measured and speedups[-1] >= 1.6 and all(s < 1.6 for s in speedups[:-1])
    assert len(speedups) > 1 and result.macs_after == pytest.approx(teacher_macs / speedups[-1], rel=1e-6)

    with pytest.raises(PruningError, match="measured speed-up 1.00x"):  # a runtime that never gets faster
        prune_model(fresh_nano(nano_state), PruneConfig(target_speedup=1.5, latency_search_step=0.3,
                                                        max_layer_ratio=0.6), EXAMPLE, measure_speedup=lambda m: 1.0)
    with pytest.raises(PruningError, match="needs a measure_speedup"):
        prune_model(fresh_nano(nano_state), PruneConfig(target_speedup=1.5), EXAMPLE)
    with pytest.raises(PruningError, match="target_speedup must be > 1"):
        PruneConfig(target_speedup=0.9)


def test_speedup_search_refines_an_overshooting_step_to_the_least_pruned_model_that_reaches_it(nano_state):
    """A coarse step overshoots the target; the ratios between the miss and the hit are pruned afresh
    and the first that reaches the target is kept (measure: the MACs ratio, deterministic)."""
    teacher_macs, _ = count_macs_params(fresh_nano(nano_state), EXAMPLE)

    def macs_speedup(model):
        return teacher_macs / count_macs_params(model, EXAMPLE)[0]

    coarse = PruneConfig(target_speedup=1.6, latency_search_step=0.2, latency_refine_points=0)
    _, plain = prune_to_speedup(lambda: fresh_nano(nano_state), coarse, EXAMPLE, macs_speedup)
    assert plain.refinement == [] and plain.measured_speedup == plain.history[-1]["speedup"] > 1.6 + 0.1

    model, refined = prune_to_speedup(lambda: fresh_nano(nano_state), replace(coarse, latency_refine_points=3),
                                      EXAMPLE, macs_speedup)
    low, high = plain.history[-2]["channel_ratio"], plain.history[-1]["channel_ratio"]
    assert refined.history == plain.history and refined.refinement  # the same coarse search, then trials
    assert all(low < trial["channel_ratio"] < high for trial in refined.refinement)
    assert len({trial["macs"] for trial in refined.refinement}) == len(refined.refinement)  # each model timed once
    assert all(trial["speedup"] < 1.6 for trial in refined.refinement[:-1])
    assert refined.refinement[-1]["speedup"] >= 1.6 and refined.channel_ratio == refined.refinement[-1]["channel_ratio"]
    assert 1.6 <= refined.measured_speedup < plain.measured_speedup
    assert refined.measured_speedup == pytest.approx(macs_speedup(model))
    assert refined.macs_after == count_macs_params(model, EXAMPLE)[0] > plain.macs_after
    assert set(refined.kept_output_channels) == set(plain.kept_output_channels)  # what the refit reads
    with pytest.raises(PruningError, match="latency_refine_points must be >= 0"):
        PruneConfig(target_speedup=1.5, latency_refine_points=-1)


def test_a_close_call_is_timed_again_and_a_step_within_the_noise_reaches_the_target():
    timings = iter([1.29, 1.31, 1.28, 1.30, 1.29, 1.10])
    measure = repeat_close_calls(lambda model: next(timings), target=1.30, margin=0.05, repeats=5)
    close = measure(None)
    assert close.samples == (1.29, 1.31, 1.28, 1.30, 1.29)  # within 5% of the target: timed five times
    low, high = close.interval
    assert low < 1.30 < high and close.reaches(1.30)  # 1.294 on average, but the target is within its noise
    far = measure(None)
    assert far.samples == (1.10,) and not far.reaches(1.30)  # far below it: one timing decides
    assert not SpeedupMeasurement((1.20, 1.21, 1.20, 1.21, 1.20)).reaches(1.30)  # tight timings below it
    assert SpeedupMeasurement((1.3,)).to_dict()["speedup_spread"] == 0.0


def test_one_wild_timing_above_the_target_is_confirmed_and_cannot_end_the_search():
    """Measured here: a step that times about 1.22x once timed 1.64x against a 1.40x target."""
    timings = iter([1.645, 1.22, 1.21, 1.23, 1.22, 1.45, 1.44, 1.46, 1.43, 1.45])
    measure = repeat_close_calls(lambda model: next(timings), target=1.40, margin=0.05, repeats=5)
    wild = measure(None)
    assert len(wild.samples) == 5 and wild.interval[1] >= 1.40  # the outlier widens the interval ...
    assert not wild.reaches(1.40)  # ... but the median (1.22) is far below: not reached
    real = measure(None)
    assert len(real.samples) == 5 and real.reaches(1.40)  # above the target, confirmed five times


def test_the_search_takes_a_step_within_the_noise_and_records_its_timings(nano_state):
    timings = iter([1.10, 1.20] + [1.29, 1.27, 1.31, 1.28, 1.30] * 10)  # the third step times 1.29 +- 0.02

    config = PruneConfig(target_speedup=1.3, latency_search_step=0.05, latency_refine_points=0)
    _, result = prune_to_speedup(lambda: fresh_nano(nano_state), config, EXAMPLE,
                                 repeat_close_calls(lambda model: next(timings), 1.3, margin=0.05, repeats=5))
    assert len(result.history) == 3  # one timing of 1.29 would have pruned on
    last = result.history[-1]
    assert last["speedup_samples"] == [1.29, 1.27, 1.31, 1.28, 1.30] and last["speedup_ci95"][1] >= 1.3
    assert [len(step["speedup_samples"]) for step in result.history] == [1, 1, 5]
    assert last["speedup_spread"] == pytest.approx(0.04 / 1.29, rel=1e-3)


def test_a_pinned_architecture_reproduces_the_same_channels(nano_state):
    """What pruning.json records as ``reproduce`` prunes the same channels without any timing."""
    teacher_macs, _ = count_macs_params(fresh_nano(nano_state), EXAMPLE)

    def macs_speedup(model):
        return teacher_macs / count_macs_params(model, EXAMPLE)[0]

    config = PruneConfig(target_speedup=1.5, latency_search_step=0.1, latency_refine_points=3)
    searched, result = prune_to_speedup(lambda: fresh_nano(nano_state), config, EXAMPLE, macs_speedup)
    record = {"channels": conv_channels(searched), "reproduce": reproducible_prune_config(config, result)}
    again = fresh_nano(nano_state)
    prune_model(again, pinned_prune_config(record, config), EXAMPLE)
    assert conv_channels(again) == record["channels"] != conv_channels(fresh_nano(nano_state))
    with pytest.raises(PruningError, match="does not record how to reproduce"):
        pinned_prune_config({"allocation": "latency", "channels": {}}, config)
