"""Run by test_train.py under torchrun: a few distillation steps in data parallel (2 CPU processes, gloo)."""
import sys

import numpy as np
import torch
import torch.distributed as dist

from prune_perception.compress.train import TrainConfig, Trainer
from prune_perception.data.augment import AugmentConfig, Sample
from prune_perception.models.yolox import build_yolox

torch.manual_seed(0)
teacher = build_yolox("yolox_nano", num_classes=3).eval()
student = build_yolox("yolox_nano", num_classes=3)
student.load_state_dict(teacher.state_dict())
with torch.no_grad():
    for p in student.parameters(): p.add_(torch.randn_like(p) * 0.01)
rng = np.random.default_rng(0)
samples = [Sample.unlabelled(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)) for _ in range(8)]
config = TrainConfig(steps=3, batch_size=4, checkpoint_every=100, ema_decay=0)
trainer = Trainer(student, teacher, samples, config, sys.argv[1], AugmentConfig(input_size=128))
trainer.fit(progress=False)
checksum = sum(float(p.double().sum()) for p in student.parameters())
print(f"rank {trainer.rank}/{trainer.world_size} checksum {checksum:.10f}", flush=True)
dist.destroy_process_group()
