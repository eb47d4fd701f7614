"""Sensitivity scan, latency table and latency-aware allocation on YOLOX-Nano at a small input, and
residual block removal."""

import copy

import numpy as np
import pytest
import torch

from prune_perception.compress.allocation import LayerLatencyTable, allocate_to_target, conv_shapes, greedy_allocation
from prune_perception.compress.block_removal import rank_blocks, remove_blocks
from prune_perception.compress.prune import PruneConfig, prune_model
from prune_perception.compress.sensitivity import SensitivityScan, output_damage, scan_sensitivity
from prune_perception.errors import PrunePerceptionError
from prune_perception.models.pruned_checkpoint import save_pruned_checkpoint

HW = (128, 224)


@pytest.fixture(scope="module")
def model_and_images(yolox_nano_path, dashcam_frames):
    from prune_perception.compress.batchnorm import reparameterize_batchnorm
    from prune_perception.models.weights import load_onnx_weights
    from prune_perception.models.yolox import build_yolox
    from prune_perception.runtime.metadata import InputSpec
    from prune_perception.runtime.preprocess import Preprocessor

    model = load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).eval()
    preprocessor = Preprocessor(InputSpec(width=HW[1], height=HW[0]))
    images = torch.from_numpy(np.concatenate([preprocessor(frame)[0] for frame in dashcam_frames[::6][:8]]))
    reparameterize_batchnorm(model, [images])
    return model, images


@pytest.fixture(scope="module")
def scan(model_and_images):
    model, images = model_and_images
    return scan_sensitivity(model, images[:4], ratios=(0.3, 0.6), progress=False)


def test_scan_covers_every_group_with_growing_damage(scan):
    assert len(scan.groups) > 50
    for group in scan.groups:
        assert group.levels and all(level.damage >= 0 for level in group.levels)
        assert group.out_convs and group.levels[0].keep > group.levels[-1].keep >= group.min_keep
    grows = [g.levels[-1].damage >= g.levels[0].damage for g in scan.groups]
    assert np.mean(grows) > 0.9
    # the stem side is sensitive, the last head branches barely matter to the outputs
    ranked = sorted(scan.groups, key=lambda g: g.levels[-1].damage)
    assert any(g.root.startswith("backbone.backbone.dark") for g in ranked[-5:])
    again = SensitivityScan.from_dict(scan.to_dict())
    assert again.groups[0].damage_at(again.groups[0].levels[0].keep) == pytest.approx(scan.groups[0].levels[0].damage)


def test_scanned_damage_is_the_damage_of_really_pruning_the_group(model_and_images, scan):
    """The scan substitutes channel means instead of pruning; compensated pruning is the same function."""
    model, images = model_and_images
    group = max(scan.groups, key=lambda g: g.levels[0].damage if g.root.endswith("pconv.conv") else 0)
    level = group.levels[0]
    pruned = copy.deepcopy(model)
    ratio = (group.channels - level.keep) / group.channels - 1e-6
    result = prune_model(pruned, PruneConfig(importance="energy", layer_ratios={group.root: ratio}), images[:1],
                         calibration=images[:4])
    assert pruned.get_submodule(group.root).out_channels == level.keep
    removed = sum(model.get_submodule(name).out_channels - len(indices)  # conv output channels removed, in all
                  for name, indices in result.kept_output_channels.items())
    total = sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert result.channel_ratio == pytest.approx(removed / total) and result.channel_ratio > 0
    with torch.no_grad():
        damage = output_damage(pruned.eval()(images[:4]), model(images[:4]))
    assert damage == pytest.approx(level.damage, rel=0.05, abs=1e-4)


def test_latency_table_is_measured_once_per_shape(model_and_images, tmp_path):
    model, images = model_and_images
    shapes = conv_shapes(model, images[:1])
    table = LayerLatencyTable(tmp_path / "table.json", runs=5, warmup=1)
    first = [table(shape) for shape in list(shapes.values())[:10]]
    assert all(value > 0 for value in first) and table.measured == len({s.key() for s in list(shapes.values())[:10]})
    table.save()
    cached = LayerLatencyTable(tmp_path / "table.json")
    assert [cached(shape) for shape in list(shapes.values())[:10]] == first and cached.measured == 0
    assert LayerLatencyTable(tmp_path / "table.json", threads=1).table == {}  # another backend setting: another table


def test_greedy_allocation_spends_damage_where_it_saves_most(model_and_images, scan, tmp_path):
    model, images = model_and_images
    shapes = conv_shapes(model, images[:1])
    table = LayerLatencyTable(tmp_path / "table.json", runs=30, warmup=3)  # tiny layers: tens of microseconds
    small = greedy_allocation(scan, shapes, table, 0.05 * sum(table(s) for s in shapes.values()))
    large = greedy_allocation(scan, shapes, table, 0.15 * sum(table(s) for s in shapes.values()))
    assert 0 < len(small.keep) <= len(large.keep) and small.estimated_damage <= large.estimated_damage
    groups = {g.root: g for g in scan.groups}
    assert all(groups[root].min_keep <= kept < groups[root].channels and kept % 8 == 0 for root, kept in large.keep.items())
    with pytest.raises(PrunePerceptionError, match="cannot save"):
        greedy_allocation(scan, shapes, table, 10 * large.layer_sum_ms)


class StaircaseTable(LayerLatencyTable):
    """Latency that only drops at every 16th channel (a plateau such as small layers timed as launch
    overhead show). A controlled input for the greedy, not a stand-in for a backend."""

    def _measure(self, shape):
        blocks = -(-shape.in_channels // 16) * -(-shape.out_channels // 16)
        return 1e-6 * blocks * shape.kernel ** 2 * shape.height * shape.width / shape.stride ** 2


def test_greedy_allocation_crosses_a_plateau_with_a_longer_step(model_and_images, scan, monkeypatch):
    import prune_perception.compress.allocation as allocation_module

    model, images = model_and_images
    shapes = conv_shapes(model, images[:1])
    # ordinary steps of one multiple of 8 channels: on this staircase none of them saves anything
    monkeypatch.setattr(allocation_module, "STEP_MULTIPLES", (1,))
    table = StaircaseTable(None)
    goal = 0.1 * sum(table(s) for s in shapes.values())
    with pytest.raises(PrunePerceptionError, match="cannot save"):
        greedy_allocation(scan, shapes, table, goal, longer_steps=False)
    allocation = greedy_allocation(scan, shapes, table, goal)
    assert allocation.estimated_saving_ms >= 0.1 * allocation.layer_sum_ms
    groups = {g.root: g for g in scan.groups}
    assert all(g.channels % 16 == 0 for g in scan.groups)
    # every cut it made is a longer step, down to the next stair
    assert allocation.keep and all(kept % 16 == 0 and kept < groups[root].channels for root, kept in allocation.keep.items())


def test_allocation_meets_a_latency_target_measured_on_onnxruntime(model_and_images, scan, tmp_path):
    from prune_perception.eval.latency_benchmark import measure_latency
    from prune_perception.export.onnx_export import export_onnx
    from prune_perception.runtime.class_names import COCO_CLASSES
    from prune_perception.runtime.metadata import InputSpec

    model, images = model_and_images
    spec = InputSpec(width=HW[1], height=HW[0])
    teacher_onnx = export_onnx(model, tmp_path / "teacher.onnx", COCO_CLASSES, spec).path
    channels = {g.root: g.channels for g in scan.groups}
    inputs = [images[i:i + 1].numpy() for i in range(4)]

    def prune_with(allocation):
        student = copy.deepcopy(model)
        prune_model(student, PruneConfig(importance="energy", layer_ratios=allocation.ratios(channels)), images[:1],
                    calibration=images[:4])
        return student

    def speedup(student, runs=40):
        path = export_onnx(student, tmp_path / "student.onnx", COCO_CLASSES, spec).path
        timings = measure_latency({"teacher": teacher_onnx, "student": path}, inputs, runs=runs, warmup=5, device="cpu")
        path.unlink()
        return timings["teacher"].p50_ms / timings["student"].p50_ms

    # The per-layer table is timed on a shared 2-core machine, and its noise can hide a few percent of
    # the saving: at 1.3x a full run here once stopped at 2.42 of the 2.53 ms asked. The target is 1.2x,
    # which leaves the table that margin; one fresh table is still allowed after a noise burst.
    target = 1.2
    for attempt in range(2):
        table = LayerLatencyTable(tmp_path / f"table_{attempt}.json", runs=10)
        try:
            allocation, rounds = allocate_to_target(scan, conv_shapes(model, images[:1]), table, target,
                                                    lambda a: speedup(prune_with(a)))
            break
        except PrunePerceptionError as exc:
            if attempt == 1 or "cannot save" not in str(exc):
                raise
    assert rounds[-1]["measured_speedup"] >= target
    assert speedup(prune_with(allocation), runs=80) >= target * 0.9  # re-measured: the target holds beyond noise


def test_block_removal_keeps_a_forward_pass_an_export_and_a_checkpoint(model_and_images, tmp_path):
    from prune_perception.export.onnx_export import export_onnx
    from prune_perception.runtime.backends.torch_backend import load_torch_model
    from prune_perception.runtime.class_names import COCO_CLASSES
    from prune_perception.runtime.metadata import InputSpec

    model, images = model_and_images
    ranked = rank_blocks(model, images[:4])
    assert len(ranked) == 7 and ranked == sorted(ranked, key=lambda b: b.damage)
    assert ranked[0].name.startswith("backbone.backbone.dark4")  # the gentlest, as measured on the shared model
    student = remove_blocks(copy.deepcopy(model), [ranked[0].name])
    with torch.no_grad():
        out = student.eval()(images[:2])
    assert out.shape == model(images[:2]).shape
    result = export_onnx(student, tmp_path / "dropped.onnx", COCO_CLASSES, InputSpec(width=HW[1], height=HW[0]),
                         sample_inputs=[images[:1].numpy()])
    assert result.relative_diff < 1e-3
    save_pruned_checkpoint(tmp_path / "dropped.pt", student, "prune_perception.models.yolox:build_yolox",
                           {"variant": "yolox_nano", "num_classes": 80, "removed_blocks": [ranked[0].name]})
    reloaded = load_torch_model(tmp_path / "dropped.pt").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(images[:2]), out, atol=1e-5)
    with pytest.raises(PrunePerceptionError, match="not residual blocks"):
        remove_blocks(copy.deepcopy(model), ["backbone.C3_p4.m.0"])  # no shortcut there
