"""Unstructured and 2:4 sparsity: the pattern TensorRT checks, masks that survive training, and
the zeros reaching the exported ONNX."""

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from prune_perception.compress.sparsity import (
    SparsityError,
    SparsityMasks,
    is_two_four,
    sparse_candidates,
    sparsify,
    two_four_mask,
)
from prune_perception.compress.train import TrainConfig, Trainer
from prune_perception.data.augment import AugmentConfig, Sample
from prune_perception.data.datasets import load_yolo_dataset
from prune_perception.export.onnx_export import export_onnx
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.runtime.class_names import COCO_CLASSES
from prune_perception.runtime.metadata import InputSpec

SIZE = 256


@pytest.fixture(scope="module")
def teacher(yolox_nano_path):
    return load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).eval()


def test_two_four_mask_keeps_the_two_largest_of_every_run_of_four_input_channels():
    weight = torch.tensor([[1.0, -5.0, 2.0, 0.5, 3.0, -0.1, 0.2, -4.0]]).reshape(1, 8, 1, 1)
    mask = two_four_mask(weight)
    assert mask.flatten().tolist() == [0, 1, 1, 0, 1, 0, 0, 1]
    random = torch.randn(16, 32, 3, 3)
    sparse = random * two_four_mask(random)
    assert is_two_four(sparse) and not is_two_four(random)
    assert (sparse == 0).float().mean() == pytest.approx(0.5)
    # per output channel and kernel position, the runs go along the input channels
    runs = sparse.permute(0, 2, 3, 1).reshape(-1, 4)
    kept = random.abs().permute(0, 2, 3, 1).reshape(-1, 4).topk(2, dim=1).values.sum(dim=1)
    torch.testing.assert_close(runs.abs().sum(dim=1), kept)
    with pytest.raises(SparsityError, match="multiple of 4"):
        two_four_mask(torch.randn(4, 6, 1, 1))


def test_two_four_on_yolox_nano_skips_depthwise_and_head_outputs(teacher):
    model = copy.deepcopy(teacher)
    masks = sparsify(model, "2:4")
    convs = dict(model.named_modules())
    assert masks.masks and all(is_two_four(convs[name].weight) for name in masks.masks)
    assert all(convs[name].groups == 1 for name in masks.masks)  # depthwise convs cannot hold 2:4
    assert not any("_preds" in name for name in masks.masks)  # the output format stays dense
    summary = masks.summary(model)
    assert summary["zero_fraction_in_sparse_layers"] == pytest.approx(0.5, abs=0.01)
    assert 0.3 < summary["zero_fraction_of_conv_weights"] < 0.5
    with torch.no_grad():  # the same model still runs, and its output moved but is not destroyed
        image = torch.rand(1, 3, SIZE, SIZE) * 255
        assert model(image).shape == teacher(image).shape


def test_unstructured_sparsity_is_global_by_magnitude(teacher):
    model = copy.deepcopy(teacher)
    masks = sparsify(model, "unstructured", amount=0.6)
    candidates = sparse_candidates(model, "unstructured")
    zeros = sum(int((conv.weight == 0).sum()) for conv in candidates.values())
    total = sum(conv.weight.numel() for conv in candidates.values())
    assert zeros / total == pytest.approx(0.6, abs=0.005)
    survivors = torch.cat([conv.weight[conv.weight != 0].abs() for conv in candidates.values()])
    removed = torch.cat([copy.deepcopy(teacher).get_submodule(name).weight[mask == 0].abs()
                         for name, mask in masks.masks.items()])
    assert removed.max() <= survivors.min()  # the smallest magnitudes went, across layers
    with pytest.raises(SparsityError, match="mode"):
        sparsify(model, "4:8")


def test_masks_survive_recovery_training(teacher, coco128_dir, tmp_path):
    items = load_yolo_dataset(coco128_dir / "images")[:6]
    samples = [Sample(i.read(), i.boxes_xyxy.astype(np.float32), i.class_ids) for i in items]
    student = copy.deepcopy(teacher)
    sparsify(student, "2:4")
    start = copy.deepcopy(student)
    masks = SparsityMasks.from_zeros(student, "2:4")
    config = TrainConfig(steps=3, batch_size=2, learning_rate=1e-3, warmup_steps=1, ema_decay=0.9, checkpoint_every=1000)
    trainer = Trainer(student, teacher, samples, config, tmp_path, AugmentConfig(input_size=SIZE),
                      weight_constraint=masks.apply)
    trainer.fit(progress=False)
    for model in (student, trainer.trained_model()):  # the trained weights and their EMA
        convs = dict(model.named_modules())
        assert all(is_two_four(convs[name].weight) for name in masks.masks)
    name = next(name for name in masks.masks if ".stem." not in name)  # the stem is frozen in recovery
    moved = (dict(student.named_modules())[name].weight - start.get_submodule(name).weight).abs().max()
    assert moved > 0  # the kept weights did train


def test_exported_onnx_keeps_the_two_four_pattern(teacher, tmp_path):
    model = copy.deepcopy(teacher)
    masks = sparsify(model, "2:4")
    exported = export_onnx(model, tmp_path / "sparse.onnx", COCO_CLASSES, InputSpec(width=SIZE, height=SIZE))
    graph = onnx.load(str(exported.path)).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    conv_weights = [initializers[node.input[1]] for node in graph.node
                    if node.op_type == "Conv" and node.input[1] in initializers]
    two_four = [w for w in conv_weights if w.shape[1] % 4 == 0 and is_two_four(torch.from_numpy(w.copy()))]
    assert len(two_four) == len(masks.masks)  # BatchNorm folding scales output channels: zeros stay zeros
