"""The peers our pruning is measured against (Torch-Pruning's MetaPruner, ModelOpt FastNAS), on the
real YOLOX-Nano at a small input, and one of them through the compress pipeline's prune stage."""

import json

import numpy as np
import pytest
import torch

from prune_perception.compress.config import ConfigError, load_compress_config
from prune_perception.compress.peers import output_agreement, prune_as_peer, torch_pruning_peer
from prune_perception.compress.prune import PruningError, count_macs_params
from prune_perception.models.pruned_checkpoint import save_pruned_checkpoint
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.optional import modelopt_unavailable_reason
from prune_perception.runtime.backends.torch_backend import load_torch_model
from test_compress_pipeline import run_compress, tiny_overrides

EXAMPLE = torch.zeros(1, 3, 128, 224)


@pytest.fixture(scope="module")
def nano_state(yolox_nano_path):
    return load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).state_dict()


@pytest.fixture(scope="module")
def images(coco128_dir):
    import cv2

    from prune_perception.runtime.metadata import InputSpec
    from prune_perception.runtime.preprocess import Preprocessor

    paths = sorted((coco128_dir / "images").glob("*.jpg"))[:8]
    preprocess = Preprocessor(InputSpec(width=224, height=128))
    return torch.from_numpy(np.concatenate([preprocess(cv2.imread(str(path)))[0] for path in paths]))


def fresh_nano(state):
    model = build_yolox("yolox_nano")
    model.load_state_dict(state)
    return model.eval()


def check_pruned_model(model, tmp_path, images):
    """The head's outputs are untouched, finite, and the model round-trips through a pruned checkpoint."""
    with torch.no_grad():
        outputs = model(images[:2])
    assert outputs.shape == (2, 588, 85) and torch.isfinite(outputs).all()
    save_pruned_checkpoint(tmp_path / "pruned.pt", model, "prune_perception.models.yolox:build_yolox",
                           {"variant": "yolox_nano", "num_classes": 80})
    reloaded = load_torch_model(tmp_path / "pruned.pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images[:2]), outputs)


def test_torch_pruning_peer_reaches_the_mac_fraction_in_multiples_of_eight(nano_state, images, tmp_path):
    model = fresh_nano(nano_state)
    result = torch_pruning_peer(model, EXAMPLE, 0.7, round_to=8, iterative_steps=20)
    assert result.method == "torch_pruning" and 1 <= result.steps <= 20 and len(result.history) == result.steps
    if result.steps > 1:  # it stops at the first step under the target
        assert result.history[-2]["macs"] > 0.7 * result.macs_before
    pruned = [m.out_channels for name, m in model.named_modules()
              if isinstance(m, torch.nn.Conv2d) and "_preds" not in name and m.out_channels % 8]
    assert pruned == []
    assert (result.macs_after, result.params_after) == count_macs_params(model, EXAMPLE)
    assert result.macs_after <= 0.7 * result.macs_before and result.params_after < result.params_before
    check_pruned_model(model, tmp_path, images)
    assert json.loads(json.dumps(result.to_dict()))["pruning_steps"] == result.steps


def test_a_peer_that_cannot_reach_the_target_is_a_clear_error(nano_state):
    with pytest.raises(PruningError, match="could not reach"):
        torch_pruning_peer(fresh_nano(nano_state), EXAMPLE, 0.05, max_layer_ratio=0.2, iterative_steps=4)
    with pytest.raises(PruningError, match="unknown peer"):
        prune_as_peer("nni", fresh_nano(nano_state), EXAMPLE, 0.5, torch.zeros(1, 3, 128, 224), None)


def test_output_agreement_is_zero_for_the_reference_and_negative_for_a_damaged_copy(nano_state, images):
    model = fresh_nano(nano_state)
    score = output_agreement(model, images[:4])
    assert score(model) == 0.0
    damaged = fresh_nano(nano_state)
    with torch.no_grad():
        damaged.head.cls_preds[0].weight.mul_(0.5)
    assert score(damaged) < 0


@pytest.mark.timeout(900)
def test_modelopt_fastnas_peer_searches_a_subnet_under_the_flops_constraint(nano_state, images, tmp_path):
    reason = modelopt_unavailable_reason("torch.prune")
    if reason is not None:
        pytest.skip(reason)
    small = torch.zeros(1, 3, 64, 96)  # its sensitivity scan scores ~150 channel choices: keep each forward small
    calibration = torch.nn.functional.interpolate(images[:2], size=(64, 96), mode="bilinear")
    model, result = prune_as_peer("modelopt_fastnas", fresh_nano(nano_state), small, 0.6, calibration,
                                  tmp_path / "search" / "fastnas.pth", batch_size=2)
    assert result.method == "modelopt_fastnas"
    assert (tmp_path / "search" / "fastnas.pth").exists()  # the sensitivity scan, kept for a resume
    assert not any("Dynamic" in type(module).__name__ for module in model.modules())  # exported to plain modules
    # the search holds its own FLOPs count to 60%; Torch-Pruning's count (ours) differs by a little
    assert count_macs_params(model, small)[0] == result.macs_after <= 0.62 * result.macs_before
    assert result.params_after < result.params_before
    check_pruned_model(model, tmp_path, images)


def test_a_peer_method_needs_a_mac_fraction_and_no_architecture_of_ours():
    with pytest.raises(ConfigError, match="method must be one of"):
        load_compress_config(None, ["prune.method=nni"])
    with pytest.raises(ConfigError, match="prunes to macs_fraction"):
        load_compress_config(None, ["prune.method=torch_pruning"])
    with pytest.raises(ConfigError, match="prunes to macs_fraction"):
        load_compress_config(None, ["prune.method=torch_pruning", "prune.macs_fraction=0.6", "prune.sparsity=2:4"])


@pytest.mark.timeout(600)
def test_the_prune_stage_runs_a_peer_and_records_it(tmp_path, yolox_nano_path, coco128_dir, dashcam_path):
    overrides = tiny_overrides(tmp_path, yolox_nano_path, coco128_dir, dashcam_path) + [
        "prune.macs_fraction=0.7", "prune.method=torch_pruning", "prune.peer_iterative_steps=5"]
    result = run_compress(overrides, "prune")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "macs_0.70"
    record = json.loads((folder / "pruning.json").read_text())
    assert record["method"] == "torch_pruning" and record["macs_fraction"] <= 0.7 and record["channels"]
    assert not (folder / "reconstruction.json").exists()  # the peer's own recipe: no refit of ours
    assert (folder / "pruned.onnx").exists()
    student = load_torch_model(folder / "pruned.pt")
    convs = {name: m.out_channels for name, m in student.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs == record["channels"]


def test_a_peer_s_architecture_is_pruned_again_with_our_channel_choice(nano_state, images):
    """prune.channels_from with a peer's pruning.json: its per-layer channel counts, our importance
    and compensation choose and fold the channels."""
    from prune_perception.compress.prune import PruneConfig, conv_channels, layer_ratios_for, prune_model

    peer = fresh_nano(nano_state)
    torch_pruning_peer(peer, EXAMPLE, 0.7, iterative_steps=10)
    channels = conv_channels(peer)
    ours = fresh_nano(nano_state)
    ratios = layer_ratios_for(ours, channels)
    assert ratios and all(0 < r < 1 for r in ratios.values())
    prune_model(ours, PruneConfig(importance="energy", layer_ratios=ratios), EXAMPLE, calibration=images[:4])
    assert conv_channels(ours) == channels
    with pytest.raises(PruningError, match="do not fit"):
        layer_ratios_for(fresh_nano(nano_state), {**channels, "head.stems.0.conv": 10_000})
