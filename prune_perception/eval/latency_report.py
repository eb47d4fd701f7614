"""Summaries, report files and plots of per-frame latency measured on a running node."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from prune_perception.eval.latency import LatencySummary
from prune_perception.files import atomic_output, write_json_atomic, write_text_atomic

LATENCY_ROWS = (
    ("image_conversion_ms", "image conversion"),
    ("preprocess_ms", "preprocess"),
    ("inference_ms", "inference"),
    ("postprocess_ms", "postprocess"),
    ("tracking_ms", "tracking"),
    ("publish_ms", "publish"),
    ("in_node_ms", "in node (receive -> published)"),
    ("end_to_end_ms", "end to end (header.stamp -> published)"),
)


def summarize_latency_run(
    latencies: Mapping[str, Sequence[float]],
    frames_published: int,
    budget_ms: float,
    class_labels: Iterable[str] = (),
    node_counters: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Everything a latency report says, as plain JSON-able data.

    ``latencies`` maps ``<stage>_ms`` topic names to per-frame values; ``node_counters`` are the
    node's own totals from /diagnostics (drops, deadline misses, input errors).
    """
    counters = dict(node_counters or {})
    stats = {name: LatencySummary.of(latencies.get(name, ())) for name, _ in LATENCY_ROWS}
    inference, in_node = stats["inference_ms"], stats["in_node_ms"]
    end_to_end = np.asarray(latencies.get("end_to_end_ms", ()), dtype=np.float64)
    processed = int(end_to_end.size)
    misses = int((end_to_end > budget_ms).sum())
    return {
        "frames": {
            "published": frames_published,
            "processed": processed,
            "dropped_by_node": _int(counters.get("total_dropped_frames")),
            "received_by_node": _int(counters.get("total_frames_in")),
            "input_errors": _int(counters.get("total_input_errors")),
        },
        "budget_ms": budget_ms,
        "deadline_misses": misses,
        "deadline_miss_rate": misses / processed if processed else 0.0,
        "in_node_over_inference_p50": in_node.p50_ms / inference.p50_ms if inference.count else math.nan,
        "latency_ms": {name: vars(summary) for name, summary in stats.items()},
        "detections_per_class": dict(Counter(class_labels).most_common()),
    }


def _int(value: str | None) -> int | None:
    return None if value is None else int(float(value))


def format_summary(summary: Mapping[str, Any], title: str) -> str:
    """A terminal table of the summary."""
    frames = summary["frames"]
    lines = [
        title,
        f"  frames: {frames['published']} published, {frames['received_by_node']} received by the node, "
        f"{frames['processed']} processed, {frames['dropped_by_node']} dropped (newest-frame policy), "
        f"{frames['input_errors']} bad",
        f"  {'stage':<42}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}  (ms)",
    ]
    for name, label in LATENCY_ROWS:
        row = summary["latency_ms"][name]
        lines.append(f"  {label:<42}" + "".join(f"{row[key]:>9.2f}" for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms")))
    lines.append(
        f"  in-node / inference (p50): {summary['in_node_over_inference_p50']:.3f}   deadline misses: "
        f"{summary['deadline_misses']}/{frames['processed']} over {summary['budget_ms']:g} ms end to end"
    )
    top = list(summary["detections_per_class"].items())[:6]
    if top:
        lines.append("  detections: " + ", ".join(f"{label} {count}" for label, count in top))
    return "\n".join(lines)


def write_latency_report(
    summary: Mapping[str, Any], latencies: Mapping[str, Sequence[float]], output_dir: str | Path, title: str
) -> list[Path]:
    """Write ``report.json``, ``report.md`` and ``latency.png`` (each atomically) into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, plot_path = output_dir / "report.json", output_dir / "report.md", output_dir / "latency.png"
    write_json_atomic(json_path, {"title": title, **summary})
    table = ["| stage | p50 ms | p95 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|"]
    for name, label in LATENCY_ROWS:
        row = summary["latency_ms"][name]
        table.append(f"| {label} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['p99_ms']:.2f} | {row['max_ms']:.2f} |")
    frames = summary["frames"]
    write_text_atomic(md_path, "\n".join([
        f"# {title}", "",
        f"- Frames: {frames['published']} published, {frames['received_by_node']} received by the node, "
        f"{frames['processed']} processed, {frames['dropped_by_node']} dropped, {frames['input_errors']} bad.",
        f"- Deadline misses: {summary['deadline_misses']} of {frames['processed']} "
        f"({summary['deadline_miss_rate']:.1%}) over the {summary['budget_ms']:g} ms end-to-end budget.",
        f"- In-node time over inference time (medians): {summary['in_node_over_inference_p50']:.3f}.",
        "", *table, "", "![latency](latency.png)", "",
    ]))
    plot_latency(latencies, summary["budget_ms"], plot_path, title)
    return [json_path, md_path, plot_path]


def plot_latency(latencies: Mapping[str, Sequence[float]], budget_ms: float, path: str | Path, title: str) -> None:
    """Latency of every frame over time (with the budget line) and the end-to-end histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (over_time, histogram) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    for name, label in (("end_to_end_ms", "end to end"), ("in_node_ms", "in node"), ("inference_ms", "inference")):
        values = latencies.get(name, ())
        over_time.plot(np.arange(len(values)), values, label=label, linewidth=1)
    over_time.axhline(budget_ms, color="red", linestyle="--", label=f"budget {budget_ms:g} ms")
    over_time.set_xlabel("frame")
    over_time.set_ylabel("latency (ms)")
    over_time.set_title("latency per frame")
    over_time.legend(loc="upper right")
    end_to_end = np.asarray(latencies.get("end_to_end_ms", ()), dtype=float)
    if end_to_end.size:
        histogram.hist(end_to_end, bins=40, color="tab:blue", alpha=0.8)
    histogram.axvline(budget_ms, color="red", linestyle="--")
    histogram.set_xlabel("end-to-end latency (ms)")
    histogram.set_ylabel("frames")
    histogram.set_title("end-to-end distribution")
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
