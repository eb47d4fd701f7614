"""Soak: the verdict's arithmetic, a short real soak of detector_node (flat memory, fds and
threads), and the same soak catching a leak injected into the backend."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from prune_perception.errors import PrunePerceptionError
from prune_perception.eval.soak import ProcessSample, SoakLimits, judge, read_process

TEST_DIR = Path(__file__).resolve().parent
SHORT_LIMITS = SoakLimits(max_rss_growth_mb=12.0, max_p99_ratio=math.inf)
"""CI bounds of the 60 s soak. The p99 ratio is not judged on a shared 2-core CI machine."""


def series(rss, fds=40, threads=20, every_s=2.0):
    return [ProcessSample(elapsed_s=i * every_s, rss_mb=value, fds=fds, threads=threads, frames_out=i)
            for i, value in enumerate(rss)]


def latencies(duration_s, ms=30.0):
    return [(t, ms) for t in np.arange(0.0, duration_s, 0.1)]


def test_flat_noisy_memory_passes_and_a_leak_or_a_new_fd_fails():
    rng = np.random.default_rng(0)
    noisy = series(300 + rng.normal(0, 1.5, 30))
    verdict = judge(noisy, latencies(60), warmup_s=10, latency_window_s=10, limits=SoakLimits())
    assert verdict.passed, verdict.failures
    leak = series(300 + np.arange(30) * 1.0)  # 0.5 MB/s
    verdict = judge(leak, latencies(60), warmup_s=10, latency_window_s=10, limits=SoakLimits())
    assert not verdict.passed and "RSS grew" in verdict.failures[0] and verdict.rss_slope_mb_per_min == pytest.approx(30)
    fds = series([300.0] * 30)
    fds[-1] = ProcessSample(elapsed_s=58.0, rss_mb=300.0, fds=41, threads=20)
    assert judge(fds, latencies(60), 10, 10, SoakLimits()).failures == ["open file descriptors grew by 1 (limit 0)"]
    slower = latencies(30, 30.0) + latencies(30, 50.0)
    slower = [(t, ms) if i < 300 else (t + 30, ms) for i, (t, ms) in enumerate(slower)]
    assert "p99 latency rose 1.67x" in judge(series([300.0] * 30), slower, 10, 10, SoakLimits()).failures[0]
    with pytest.raises(PrunePerceptionError, match="at least 4 after it"):
        judge(series([300.0] * 3), [], 2, 2, SoakLimits())


def test_read_process_reads_this_process():
    rss_mb, fds, threads = read_process(os.getpid())
    assert rss_mb > 10 and fds > 2 and threads >= 1
    with pytest.raises(PrunePerceptionError, match="is gone"):
        read_process(2**22 + 12345)


def run_short_soak(tmp_path, yolox_nano_path, dashcam_path, duration_s, **node):
    import rclpy

    from prune_perception.ros.soak_session import SoakSettings, run_soak

    settings = SoakSettings(model=yolox_nano_path, video=dashcam_path, output_dir=tmp_path, duration_s=duration_s,
                            rate_hz=30.0, sample_every_s=2.0, warmup_s=20.0, latency_window_s=10.0,
                            preloaded_frames=30, detector_params={"intra_op_threads": 1, "device": "cpu"}, **node)
    assert rclpy.ok()
    return run_soak(settings, SHORT_LIMITS)


@pytest.mark.ros
def test_short_soak_holds_memory_fds_and_threads(rclpy_session, yolox_nano_path, dashcam_path, tmp_path):
    verdict = run_short_soak(tmp_path, yolox_nano_path, dashcam_path, 60.0)
    assert verdict.passed, (verdict.failures, (tmp_path / "soak.md").read_text())
    assert verdict.frames_out > 300 and verdict.inference_errors == 0
    for name in ("soak.csv", "soak.png", "soak.json", "soak.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert len((tmp_path / "soak.csv").read_text().splitlines()) >= 30


@pytest.mark.ros
def test_short_soak_catches_a_leak_of_50_kb_per_frame(rclpy_session, yolox_nano_path, dashcam_path,
                                                                    tmp_path):
    env = {"PRUNE_PERCEPTION_LEAK_KB": "50",  # >= 0.5 MB/s at the >= 10 frames/s the node runs: 20 MB in 40 s
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TEST_DIR), os.environ.get("PYTHONPATH")]))}
    verdict = run_short_soak(tmp_path, yolox_nano_path, dashcam_path, 60.0, node_module="fault_injection_node",
                             node_env=env)
    assert not verdict.passed and any("RSS grew" in failure for failure in verdict.failures), verdict
