"""Recovering a pruned detector: augmentation, losses, and the training loop (resume included)."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from prune_perception.compress.batchnorm import reparameterize_batchnorm
from prune_perception.compress.losses import (
    DistillConfig,
    assign_targets,
    detection_loss,
    distillation_loss,
)
from prune_perception.compress.prune import PruneConfig, prune_model
from prune_perception.compress.train import (
    CHECKPOINT_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    BatchPrefetcher,
    TrainConfig,
    Trainer,
    batch_for_step,
    cpu_has_native_bf16,
    ramped_ema_update,
    resolve_precision,
)
from prune_perception.data.augment import AugmentConfig, Sample, augment, horizontal_flip, letterbox
from prune_perception.data.datasets import load_yolo_dataset
from prune_perception.errors import PrunePerceptionError
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox

SIZE = 256


@pytest.fixture(scope="module")
def teacher(yolox_nano_path):
    return load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).eval()


@pytest.fixture(scope="module")
def samples(coco128_dir):
    items = load_yolo_dataset(coco128_dir / "images")[:12]
    return [Sample(i.read(), i.boxes_xyxy.astype(np.float32), i.class_ids) for i in items]


@pytest.fixture(scope="module")
def eval_batch(samples):
    images = [letterbox(s, (SIZE, SIZE)).image.transpose(2, 0, 1) for s in samples[:6]]
    return torch.from_numpy(np.stack(images)).float()


def _rows_as_logit_level(rows: torch.Tensor) -> list[torch.Tensor]:
    """Eval-mode rows ``[B, N, 5 + C]`` (sigmoid scores) -> one logit "level" ``[B, 5 + C, N, 1]``."""
    logits = rows.clone()
    logits[..., 4:] = torch.logit(rows[..., 4:].clamp(1e-6, 1 - 1e-6))
    return [logits.permute(0, 2, 1).unsqueeze(-1)]


def output_discrepancy(outputs: torch.Tensor, reference: torch.Tensor, config: DistillConfig = DistillConfig()) -> float:
    """How far eval-mode detector outputs are from reference ones: the distillation loss against
    the reference, minus the reference's own (0 when they are equal)."""
    reference_levels = _rows_as_logit_level(reference)
    loss, _ = distillation_loss(_rows_as_logit_level(outputs), reference_levels, config)
    floor, _ = distillation_loss(reference_levels, reference_levels, config)
    return float(loss - floor)


def pruned(teacher, ratio=0.5):
    student = copy.deepcopy(teacher)
    prune_model(student, PruneConfig(channel_ratio=ratio), torch.zeros(1, 3, SIZE, SIZE))
    return student


def held_out_distill_loss(student, teacher, batch):
    with torch.no_grad():
        return float(distillation_loss(student.logits(batch), teacher.logits(batch), DistillConfig())[0])


def test_augmentation_is_deterministic_and_boxes_follow(samples):
    config = AugmentConfig(input_size=SIZE, mosaic_probability=1.0)
    first = augment(samples[:4], config, np.random.default_rng(7))
    again = augment(samples[:4], config, np.random.default_rng(7))
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.boxes_xyxy, again.boxes_xyxy)
    assert first.image.shape == (SIZE, SIZE, 3) and len(first.boxes_xyxy) > 0
    assert np.all(first.boxes_xyxy >= 0) and np.all(first.boxes_xyxy <= SIZE)
    flipped = horizontal_flip(Sample(np.zeros((10, 20, 3), np.uint8), np.array([[2.0, 1, 5, 4]]), np.array([0])))
    np.testing.assert_array_equal(flipped.boxes_xyxy, [[15, 1, 18, 4]])


def test_center_sampling_assignment():
    grid = torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0]])
    strides = torch.full((4,), 8.0)  # cell centers at x = 4, 12, 20, 28; y = 4
    boxes = torch.tensor([[0.0, 0, 16, 8], [0.0, 0, 32, 8]])
    assigned = assign_targets(boxes, grid, strides)
    # cells 0 and 1 lie in both boxes and take the smaller; cells 2, 3 only in the larger
    assert assigned.tolist() == [0, 0, 1, 1]
    assert assign_targets(torch.zeros((0, 4)), grid, strides).tolist() == [-1] * 4


def test_detection_loss_prefers_the_right_answer():
    model = build_yolox("yolox_nano", num_classes=3).train()
    levels = model(torch.zeros(1, 3, 64, 64))
    target = [torch.tensor([[1.0, 8, 8, 40, 40]])]
    loss, parts = detection_loss(levels, target, (8, 16, 32))
    assert parts["label_positives"] > 0 and torch.isfinite(loss)
    empty, _ = detection_loss(levels, [torch.zeros((0, 5))], (8, 16, 32))
    assert empty < loss  # no objects: only the (small, prior-initialised) objectness term


def test_a_few_distillation_steps_lower_the_distillation_loss(teacher, samples, eval_batch, tmp_path):
    student = pruned(teacher)
    before = held_out_distill_loss(student, teacher, eval_batch)
    config = TrainConfig(steps=25, batch_size=4, learning_rate=2e-3, warmup_steps=3, ema_decay=0, checkpoint_every=1000)
    Trainer(student, teacher, samples, config, tmp_path, AugmentConfig(input_size=SIZE)).fit(progress=False)
    after = held_out_distill_loss(student, teacher, eval_batch)
    assert after < 0.9 * before, (before, after)


def test_a_converged_detector_distilled_into_itself_stays_close_only_with_its_stem_frozen(
        teacher, samples, eval_batch, tmp_path):
    """The recovery recipe must not wreck good weights: BN-folded imports get real BN statistics,
    the box term is smooth near zero, and the stem (raw 0-255 pixels in) is frozen."""
    model = reparameterize_batchnorm(copy.deepcopy(teacher), [eval_batch])

    def drift(freeze_stem: bool) -> float:
        config = TrainConfig(steps=12, batch_size=2, optimizer="sgd", learning_rate=1e-3, warmup_steps=1, ema_decay=0,
                             freeze_batchnorm=False, freeze_stem=freeze_stem, checkpoint_every=1000)
        trainer = Trainer(copy.deepcopy(model), model, samples, config, tmp_path / str(freeze_stem), AugmentConfig(input_size=SIZE))
        trainer.fit(progress=False)
        student = trainer.student.eval()
        stem = student.backbone.backbone.stem.conv.conv.weight
        assert torch.equal(stem, model.backbone.backbone.stem.conv.conv.weight) == freeze_stem
        with torch.no_grad():
            return output_discrepancy(student(eval_batch), model(eval_batch))

    frozen, trained = drift(True), drift(False)  # measured: 0.21 and 4.5
    assert frozen < 0.25 * trained, (frozen, trained)


def test_box_distillation_gradient_vanishes_as_the_student_reaches_the_teacher():
    torch.manual_seed(0)
    teacher_levels = [torch.randn(1, 85, 4, 4) * 3]
    teacher_levels[0][:, 4:] += 4.0  # confident everywhere: every cell has a box term
    student = teacher_levels[0].clone() + 1e-6 * torch.randn_like(teacher_levels[0])
    student.requires_grad_(True)
    loss, parts = distillation_loss([student], teacher_levels, DistillConfig(objectness_weight=0, class_weight=0))
    loss.backward()
    assert parts["distill_box"] < 1e-9
    assert student.grad.abs().max() < 1e-4  # plain L1 would give sign(difference): 2 / count per element


def test_label_fine_tuning_and_feature_imitation_run(teacher, samples, tmp_path):
    student = pruned(teacher)
    config = TrainConfig(steps=4, batch_size=2, label_weight=1.0, distill_weight=1.0, checkpoint_every=1000)
    trainer = Trainer(student, teacher, samples, config, tmp_path, AugmentConfig(input_size=SIZE),
                      DistillConfig(feature_weight=1.0))
    history = trainer.fit(progress=False).history
    assert len(history) == 4
    assert {"label_box", "label_objectness", "distill_feature", "lr", "grad_norm"} <= set(history[-1])
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[0]["lr"] < history[1]["lr"]  # warm-up


def test_interrupted_training_resumes_to_the_same_weights(teacher, samples, tmp_path):
    config = TrainConfig(steps=8, batch_size=2, learning_rate=1e-3, warmup_steps=2, checkpoint_every=3, ema_decay=0.9)
    augment_config = AugmentConfig(input_size=SIZE)
    reference = pruned(teacher)
    start = copy.deepcopy(reference)
    Trainer(reference, teacher, samples, config, tmp_path / "straight", augment_config).fit(progress=False)

    first = copy.deepcopy(start)
    Trainer(first, teacher, samples, config, tmp_path / "interrupted", augment_config).fit(progress=False, stop_after=5)
    # the process dies after step 5; the last checkpoint is from step 3
    resumed = copy.deepcopy(start)
    trainer = Trainer(resumed, teacher, samples, config, tmp_path / "interrupted", augment_config)
    result = trainer.fit(progress=False)
    assert result.resumed_from_step == 3 and [h["step"] for h in result.history] == list(range(8))
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one_and_says_so(teacher, samples, tmp_path, caplog):
    config = TrainConfig(steps=6, batch_size=2, learning_rate=1e-3, warmup_steps=2, checkpoint_every=2, ema_decay=0.9)
    augment_config = AugmentConfig(input_size=SIZE)
    start = pruned(teacher)
    reference = copy.deepcopy(start)
    Trainer(reference, teacher, samples, config, tmp_path / "straight", augment_config).fit(progress=False)

    folder = tmp_path / "interrupted"
    Trainer(copy.deepcopy(start), teacher, samples, config, folder, augment_config).fit(progress=False, stop_after=4)
    newest = folder / CHECKPOINT_NAME  # step 4; the one of step 2 is kept beside it
    assert (folder / PREVIOUS_CHECKPOINT_NAME).exists()
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn by a crash or a bad disk
    resumed = copy.deepcopy(start)
    with caplog.at_level("WARNING"):
        result = Trainer(resumed, teacher, samples, config, folder, augment_config).fit(progress=False)
    assert result.resumed_from_step == 2, caplog.text
    assert f"training checkpoint {newest} cannot be used" in result.resume_notes[0]
    assert "resuming from the previous one, train_checkpoint.previous.pt" in caplog.text
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

    # Both damaged: the stage starts over from step 0, and says so.
    for path in (newest, folder / PREVIOUS_CHECKPOINT_NAME):
        path.write_bytes(b"not a checkpoint")
    again = copy.deepcopy(start)
    result = Trainer(again, teacher, samples, config, folder, augment_config).fit(progress=False)
    assert result.resumed_from_step == 0 and "training starts over from step 0" in result.resume_notes[-1]
    for (name, a), b in zip(reference.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_batches_depend_only_on_seed_and_step(samples):
    config = TrainConfig(batch_size=4)
    a, _, _ = batch_for_step(samples, 11, config, AugmentConfig(input_size=SIZE))
    b, _, _ = batch_for_step(samples, 11, config, AugmentConfig(input_size=SIZE))
    c, _, _ = batch_for_step(samples, 12, config, AugmentConfig(input_size=SIZE))
    assert torch.equal(a, b) and not torch.equal(a, c)
    share, _, _ = batch_for_step(samples, 11, config, AugmentConfig(input_size=SIZE), rank=1, world_size=2)
    assert torch.equal(share, a[1::2])  # a rank's share of the same batch


def test_unlabelled_images_take_no_part_in_the_label_loss():
    model = build_yolox("yolox_nano", num_classes=3).train()
    levels = model(torch.zeros(2, 3, 64, 64))
    box = torch.tensor([[1.0, 8, 8, 40, 40]])
    only_first, _ = detection_loss([level[:1] for level in levels], [box], (8, 16, 32))
    with_unlabelled, _ = detection_loss(levels, [box, None], (8, 16, 32))
    torch.testing.assert_close(with_unlabelled, only_first)  # the unlabelled image adds no background loss
    nothing, parts = detection_loss(levels, [None, None], (8, 16, 32))
    assert float(nothing) == 0.0 and parts["label_positives"] == 0
    mosaic_of_mixed = augment([Sample(np.zeros((32, 32, 3), np.uint8), np.zeros((0, 4)), np.zeros(0)),
                               Sample.unlabelled(np.zeros((32, 32, 3), np.uint8))] * 2,
                              AugmentConfig(input_size=64, mosaic_probability=1.0), np.random.default_rng(0))
    # a labelled tile keeps its boxes as labels; the canvas is no longer exhaustively labelled
    assert mosaic_of_mixed.labelled is True and mosaic_of_mixed.exhaustive is False


def test_a_partially_labelled_image_scores_only_its_boxes():
    """A set that labels some classes: its unboxed cells are not background, a class-agnostic box
    carries no class term."""
    model = build_yolox("yolox_nano", num_classes=3).train()
    torch.manual_seed(0)
    levels = model(torch.rand(1, 3, 64, 64) * 255)
    box = torch.tensor([[1.0, 8, 8, 40, 40]])
    shifted = [level.clone() for level in levels]
    shifted[0][:, 4, 7, 7] += 5.0  # objectness far from the box (the bottom-right cell of stride 8)
    exhaustive, _ = detection_loss(levels, [box], (8, 16, 32))
    exhaustive_shifted, _ = detection_loss(shifted, [box], (8, 16, 32))
    partial, parts = detection_loss(levels, [box], (8, 16, 32), exhaustive=[False])
    partial_shifted, _ = detection_loss(shifted, [box], (8, 16, 32), exhaustive=[False])
    assert float(exhaustive_shifted) > float(exhaustive) + 1e-3
    torch.testing.assert_close(partial_shifted, partial)
    assert float(partial) < float(exhaustive) and parts["label_positives"] > 0
    agnostic = torch.tensor([[-1.0, 8, 8, 40, 40]])
    recoloured = [level.clone() for level in levels]
    for level in recoloured:
        level[:, 5:] += 3.0  # every class logit
    no_class, parts = detection_loss(levels, [agnostic], (8, 16, 32))
    torch.testing.assert_close(detection_loss(recoloured, [agnostic], (8, 16, 32))[0], no_class)
    assert parts["label_classes"] == 0.0 and parts["label_box"] > 0


def test_torchrun_data_parallel_keeps_ranks_identical(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("ddp_train_script.py")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = dict(re.findall(r"rank (\d)/2 checksum (\S+)", result.stdout))
    assert set(checksums) == {"0", "1"} and checksums["0"] == checksums["1"]  # DDP averaged the gradients
    assert (tmp_path / "train_checkpoint.pt").exists()  # written by rank 0


def test_ramped_ema_follows_the_weights_early_and_averages_later():
    from torch.optim.swa_utils import AveragedModel

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = AveragedModel(model, multi_avg_fn=ramped_ema_update(0.999, ramp_steps=100), use_buffers=True)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update_parameters(model)  # the copy at construction counts as the first average
    ema.update_parameters(model)  # decay 0.999 * (1 - exp(-1/100)) ~ 0.01: almost a copy
    assert torch.allclose(ema.module[0].weight, torch.ones(2, 2), atol=0.02)
    assert int(ema.module[1].num_batches_tracked) == 7  # integer buffers are copied, not averaged
    for _ in range(2000):
        ema.update_parameters(model)
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    ema.update_parameters(model)  # now the decay is ~0.999: one step barely moves it
    assert ema.module[0].weight.min() > 0.99


needs_native_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 "
                                       "(AVX-512 BF16 or AMX): bf16 autocast is refused there")


@needs_native_bf16
def test_bf16_and_fp32_give_close_outputs_and_the_loss_falls_under_both(teacher, samples, eval_batch, tmp_path):
    student = pruned(teacher)
    with torch.no_grad():
        reference = torch.cat([level.flatten(2) for level in student.logits(eval_batch)], dim=2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = torch.cat([level.flatten(2) for level in student.to(memory_format=torch.channels_last).logits(
                eval_batch.contiguous(memory_format=torch.channels_last))], dim=2).float()
    student.to(memory_format=torch.contiguous_format)
    # bf16 keeps 8 bits of mantissa: logits agree to a few hundredths of their spread
    assert float((fast - reference).abs().mean()) < 0.02 * float(reference.std())
    before = held_out_distill_loss(student, teacher, eval_batch)
    for precision in ("fp32", "bf16"):
        config = TrainConfig(steps=25, batch_size=4, learning_rate=2e-3, warmup_steps=3, ema_decay=0,
                             checkpoint_every=1000, precision=precision)
        trained = copy.deepcopy(student)
        trainer = Trainer(trained, teacher, samples, config, tmp_path / precision, AugmentConfig(input_size=SIZE))
        assert trainer.precision == precision
        trainer.fit(progress=False)
        after = held_out_distill_loss(trainer.trained_model(), teacher, eval_batch)
        assert after < 0.9 * before, (precision, before, after)
        # the saved model is in the default memory format, whatever the run trained in
        assert all(p.is_contiguous() for p in trainer.trained_model().parameters())


def test_precision_is_chosen_at_start_up_and_refused_where_it_cannot_run():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    with pytest.raises(PrunePerceptionError, match="fp16 needs CUDA"):
        resolve_precision("fp16", cpu)
    with pytest.raises(PrunePerceptionError, match="precision must be one of"):
        TrainConfig(precision="int4")


def test_batches_prepared_ahead_keep_a_resumed_run_byte_identical(teacher, samples, tmp_path):
    """With the worker preparing step k+1 while step k trains, batches are still a function of
    (seed, step): a run killed and resumed ends with the same bytes as one that ran straight."""
    config = TrainConfig(steps=6, batch_size=2, learning_rate=1e-3, warmup_steps=2, checkpoint_every=2,
                         ema_decay=0.9, prefetch=True)
    augment_config = AugmentConfig(input_size=SIZE)
    start = pruned(teacher)
    straight = Trainer(copy.deepcopy(start), teacher, samples, config, tmp_path / "straight", augment_config)
    assert straight.prefetch
    straight.fit(progress=False)
    Trainer(copy.deepcopy(start), teacher, samples, config, tmp_path / "killed", augment_config).fit(
        progress=False, stop_after=3)  # stops after step 3; its checkpoint is from step 2
    resumed = Trainer(copy.deepcopy(start), teacher, samples, config, tmp_path / "killed", augment_config)
    assert resumed.fit(progress=False).resumed_from_step == 2
    # the same bits in every weight, EMA weight and optimizer moment (the history differs only in its wall times)
    ends = [torch.load(tmp_path / run / CHECKPOINT_NAME, weights_only=True) for run in ("straight", "killed")]
    for key in ("student", "ema"):
        for name, value in ends[0][key].items():
            assert torch.equal(value, ends[1][key][name]), (key, name)
    for index, moments in ends[0]["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, ends[1]["optimizer"]["state"][index][name]), (index, name)
    # and the batches the worker prepared are those batch_for_step gives
    unprefetched = Trainer(copy.deepcopy(start), teacher, samples, dataclasses.replace(config, prefetch=False),
                           tmp_path / "inline", augment_config)
    unprefetched.fit(progress=False)
    for a, b in zip(straight.student.state_dict().values(), unprefetched.student.state_dict().values()):
        assert torch.equal(a, b)


def test_batch_prefetcher_hands_out_the_asked_step_even_after_a_jump():
    made = []

    def make(step):
        made.append(step)
        return step * 10

    prefetcher = BatchPrefetcher(make)
    assert prefetcher.get(0, 1) == 0
    assert prefetcher.get(1, 2) == 10  # prepared ahead
    assert prefetcher.get(5, None) == 50  # not the one prepared: made on the spot
    prefetcher.close()
    assert made[:2] == [0, 1] and 5 in made
