"""A soak run's samples and its verdict: does a process hold flat memory, file descriptors,
threads and latency over hours? No ROS in here; ``prune_perception.ros.soak_session`` feeds it.

A sample is read from ``/proc/<pid>`` (Linux, as on every vehicle computer this targets). The
verdict compares the end of the run with the end of its warm-up:

- RSS growth: median of the last three samples minus median of the first three after warm-up
  (medians, so that one allocator hiccup is not a leak), and the least-squares slope;
- fd and thread growth: the most seen after warm-up minus the most seen by the end of warm-up;
- p99 latency of the frames in the last ``latency_window_s`` against the first after warm-up.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from prune_perception.errors import PrunePerceptionError
from prune_perception.files import atomic_output, write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class ProcessSample:
    elapsed_s: float
    rss_mb: float
    fds: int
    threads: int
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    deadline_misses: int = 0
    inference_errors: int = 0
    window_p50_ms: float = math.nan
    window_p99_ms: float = math.nan
    level: int = -1  # diagnostics level at the sample, -1 before the first diagnostics


def read_process(pid: int) -> tuple[float, int, int]:
    """(RSS in MB, open file descriptors, threads) of a live process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise PrunePerceptionError(f"process {pid} is gone") from exc
    fields_ = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields_["VmRSS"].split()[0])
    return rss_kb / 1024.0, fds, int(fields_["Threads"])


@dataclass(frozen=True)
class SoakLimits:
    max_rss_growth_mb: float = 20.0
    max_fd_growth: int = 0
    max_thread_growth: int = 0
    max_p99_ratio: float = 1.2


@dataclass
class SoakVerdict:
    passed: bool
    rss_start_mb: float
    rss_end_mb: float
    rss_growth_mb: float
    rss_slope_mb_per_min: float
    fd_growth: int
    thread_growth: int
    p99_first_ms: float
    p99_last_ms: float
    p99_ratio: float
    frames_in: int
    frames_out: int
    dropped: int
    deadline_misses: int
    inference_errors: int
    latency_window_s: float
    failures: list[str] = field(default_factory=list)


def judge(samples: Sequence[ProcessSample], latencies: Sequence[tuple[float, float]], warmup_s: float,
          latency_window_s: float, limits: SoakLimits) -> SoakVerdict:
    """The verdict of a run. ``latencies``: (elapsed_s, end-to-end ms) of every published frame."""
    steady = [s for s in samples if s.elapsed_s >= warmup_s]
    warm = [s for s in samples if s.elapsed_s < warmup_s]
    if len(steady) < 4 or not warm:
        raise PrunePerceptionError(
            f"a verdict needs samples in the warm-up and at least 4 after it; got {len(warm)} and {len(steady)} "
            "(run longer, or sample more often)")
    rss = np.asarray([s.rss_mb for s in steady])
    start, end = float(np.median(rss[:3])), float(np.median(rss[-3:]))
    times_min = np.asarray([s.elapsed_s for s in steady]) / 60.0
    slope = float(np.polyfit(times_min, rss, 1)[0])
    fd_growth = max(s.fds for s in steady) - max(s.fds for s in warm)
    thread_growth = max(s.threads for s in steady) - max(s.threads for s in warm)
    last_s = samples[-1].elapsed_s
    values = np.asarray([ms for t, ms in latencies if t >= warmup_s], np.float64)
    times = np.asarray([t for t, _ in latencies if t >= warmup_s], np.float64)
    first = values[times < warmup_s + latency_window_s]
    last = values[times >= last_s - latency_window_s]
    p99_first = float(np.percentile(first, 99)) if first.size else math.nan
    p99_last = float(np.percentile(last, 99)) if last.size else math.nan
    ratio = p99_last / p99_first if first.size and last.size else math.nan
    final = samples[-1]
    failures = []
    if end - start > limits.max_rss_growth_mb:
        failures.append(f"RSS grew {end - start:.1f} MB after warm-up (limit {limits.max_rss_growth_mb:g} MB)")
    if fd_growth > limits.max_fd_growth:
        failures.append(f"open file descriptors grew by {fd_growth} (limit {limits.max_fd_growth})")
    if thread_growth > limits.max_thread_growth:
        failures.append(f"threads grew by {thread_growth} (limit {limits.max_thread_growth})")
    if math.isnan(ratio):
        failures.append("no frames were published in the first or the last latency window")
    elif ratio > limits.max_p99_ratio:
        failures.append(f"p99 latency rose {ratio:.2f}x from the first to the last {latency_window_s:g} s "
                        f"(limit {limits.max_p99_ratio:g}x)")
    return SoakVerdict(
        passed=not failures, rss_start_mb=start, rss_end_mb=end, rss_growth_mb=end - start, rss_slope_mb_per_min=slope,
        fd_growth=fd_growth, thread_growth=thread_growth, p99_first_ms=p99_first, p99_last_ms=p99_last, p99_ratio=ratio,
        frames_in=final.frames_in, frames_out=final.frames_out, dropped=final.dropped,
        deadline_misses=final.deadline_misses, inference_errors=final.inference_errors,
        latency_window_s=latency_window_s, failures=failures,
    )


def write_samples_csv(path: Path, samples: Sequence[ProcessSample]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([f.name for f in fields(ProcessSample)])
        for sample in samples:
            writer.writerow([getattr(sample, f.name) for f in fields(ProcessSample)])


def plot_soak(path: Path, samples: Sequence[ProcessSample], latencies: Sequence[tuple[float, float]],
              warmup_s: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.elapsed_s / 60.0 for s in samples]
    figure, (memory_axis, latency_axis) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    memory_axis.plot(minutes, [s.rss_mb for s in samples], marker=".", label="RSS")
    memory_axis.set_ylabel("RSS (MB)")
    memory_axis.axvline(warmup_s / 60.0, color="grey", linestyle="--", label="end of warm-up")
    memory_axis.legend(loc="lower right")
    memory_axis.set_title(title)
    if latencies:
        latency_axis.plot([t / 60.0 for t, _ in latencies], [ms for _, ms in latencies], ",", alpha=0.3,
                          label="end-to-end, each frame")
    latency_axis.plot(minutes, [s.window_p99_ms for s in samples], marker=".", label="p99 of the diagnostics window")
    latency_axis.set_ylabel("latency (ms)")
    latency_axis.set_xlabel("minutes")
    latency_axis.legend(loc="upper right")
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def write_soak_report(output_dir: Path, verdict: SoakVerdict, samples: Sequence[ProcessSample],
                      latencies: Sequence[tuple[float, float]], settings: dict, limits: SoakLimits) -> None:
    """soak.csv, soak.png, soak.json and soak.md in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_samples_csv(output_dir / "soak.csv", samples)
    plot_soak(output_dir / "soak.png", samples, latencies, settings["warmup_s"],
              f"detector_node soak: {settings['duration_s']:g} s at {settings['rate_hz']:g} Hz")
    write_json_atomic(output_dir / "soak.json", {"verdict": asdict(verdict), "limits": asdict(limits), "settings": settings})
    duration = samples[-1].elapsed_s
    lines = [
        f"# Soak: {'PASS' if verdict.passed else 'FAIL'}",
        "",
        f"detector_node ran {duration / 60:.1f} min on `{settings['model']}`, fed {settings['width']}x{settings['height']} "
        f"frames of `{Path(settings['video']).name}` at {settings['rate_hz']:g} Hz over DDS; sampled every "
        f"{settings['sample_every_s']:g} s, warm-up {settings['warmup_s']:g} s.",
        "",
        "| measure | value | limit |",
        "|---|---:|---:|",
        f"| RSS after warm-up -> end | {verdict.rss_start_mb:.1f} -> {verdict.rss_end_mb:.1f} MB "
        f"({verdict.rss_growth_mb:+.1f} MB, {verdict.rss_slope_mb_per_min:+.2f} MB/min) | {limits.max_rss_growth_mb:g} MB |",
        f"| open fds growth | {verdict.fd_growth:+d} | {limits.max_fd_growth} |",
        f"| threads growth | {verdict.thread_growth:+d} | {limits.max_thread_growth} |",
        f"| end-to-end p99, first -> last {verdict.latency_window_s:g} s | {verdict.p99_first_ms:.1f} -> "
        f"{verdict.p99_last_ms:.1f} ms ({verdict.p99_ratio:.2f}x) | {limits.max_p99_ratio:g}x |",
        f"| frames received / published | {verdict.frames_in} / {verdict.frames_out} | |",
        f"| dropped (newest frame wins) | {verdict.dropped} | |",
        f"| deadline misses ({settings['latency_budget_ms']:g} ms) | {verdict.deadline_misses} | |",
        f"| inference errors | {verdict.inference_errors} | |",
        "",
    ]
    lines += [f"- {failure}" for failure in verdict.failures] or ["All limits held."]
    lines += ["", "![RSS and latency over time](soak.png)", ""]
    write_text_atomic(output_dir / "soak.md", "\n".join(lines))
