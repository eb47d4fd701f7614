"""The eval-bag report: models side by side (md + json), a per-frame CSV, and plots of latency over
time, latency distribution against the budget, and precision-recall curves. All written atomically."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from prune_perception.eval.bag_eval import ModelResult
from prune_perception.eval.coco_eval import SIZES_AND_BANDS
from prune_perception.eval.latency import LatencySummary
from prune_perception.files import atomic_output, write_json_atomic, write_text_atomic

STAGE_FIELDS = ("preprocess_ms", "inference_ms", "postprocess_ms", "total_ms")


def model_summary(result: ModelResult, budget_ms: float) -> dict[str, Any]:
    stages = {stage: vars(LatencySummary.of(getattr(f, stage) for f in result.frames)) for stage in STAGE_FIELDS}
    reference = result.end_to_end_ms if result.end_to_end_ms else [f.total_ms for f in result.frames]
    if result.end_to_end_ms:
        stages["end_to_end_ms"] = vars(LatencySummary.of(result.end_to_end_ms))
    misses = int(sum(value > budget_ms for value in reference))
    busy_s = sum(f.total_ms for f in result.frames) / 1000
    metrics = result.metrics
    return {
        "name": result.name, "model": result.model, "backend": result.backend, "mode": result.mode,
        "ap": metrics.ap, "ap50": metrics.ap50, "ap75": metrics.ap75, "per_class_ap": metrics.per_class_ap,
        "ap_by_size_band": metrics.by_size_and_band(),
        "frames_processed": len(result.frames), "frames_dropped": result.dropped,
        "deadline_reference": "end_to_end_ms" if result.end_to_end_ms else "total_ms (preprocess+inference+postprocess)",
        "deadline_misses": misses, "deadline_miss_rate": misses / len(reference) if reference else math.nan,
        "throughput_fps": len(result.frames) / busy_s if busy_s else math.nan,
        "latency_ms": stages,
        "precision_at_iou50": list(metrics.precision_at_iou50),
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_bag_report(output_dir: str | Path, results: Sequence[ModelResult], facts: dict[str, Any],
                     budget_ms: float) -> dict[str, Any]:
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    summaries = [model_summary(result, budget_ms) for result in results]
    baseline = summaries[0]["latency_ms"]["inference_ms"]["p50_ms"]
    for summary in summaries:
        p50 = summary["latency_ms"]["inference_ms"]["p50_ms"]
        summary["inference_speedup_vs_first"] = baseline / p50 if p50 else math.nan
    report = {**facts, "budget_ms": budget_ms, "models": summaries}
    write_json_atomic(output / "report.json", report)
    write_text_atomic(output / "report.md", _markdown(report))
    _write_csv(output / "frames.csv", results)
    plot_latency_over_time(results, budget_ms, output / "latency_over_time.png")
    plot_latency_histogram(results, budget_ms, output / "latency_histogram.png")
    plot_precision_recall(summaries, output / "precision_recall.png")
    return report


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# eval-bag: {Path(report['bag']).name}", "",
             f"- mode: **{report['mode']}**; frames evaluated: {report['frames_evaluated']} "
             f"(without ground truth: {report['frames_without_ground_truth']})",
             f"- ground truth: {report['ground_truth']}",
             f"- latency budget: {report['budget_ms']:g} ms", ""]
    if report.get("fidelity_mode"):
        lines += ["> **Fidelity mode**: AP below measures agreement with the teacher's detections, not accuracy.", ""]
    lines += ["| model | backend | AP | AP50 | p50 ms | p95 ms | p99 ms | max ms | speed-up | deadline misses | dropped | capacity fps |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in report["models"]:
        key = "end_to_end_ms" if "end_to_end_ms" in m["latency_ms"] else "total_ms"
        lat = m["latency_ms"][key]
        lines.append(f"| {m['name']} | {m['backend']} | {_fmt(m['ap'])} | {_fmt(m['ap50'])} | {_fmt(lat['p50_ms'], 2)} | "
                     f"{_fmt(lat['p95_ms'], 2)} | {_fmt(lat['p99_ms'], 2)} | {_fmt(lat['max_ms'], 2)} | "
                     f"{_fmt(m['inference_speedup_vs_first'], 2)}x | {m['deadline_misses']} ({100 * m['deadline_miss_rate']:.1f}%) | "
                     f"{m['frames_dropped']} | {_fmt(m['throughput_fps'], 1)} |")
    lines += ["", "Latency columns: " + ("end to end (image header stamp -> detections published)"
                                         if report["mode"] == "live" else "preprocess + inference + postprocess")
              + "; speed-up: inference p50 of the first model over this one's; capacity fps: 1000 / mean "
              "(preprocess + inference + postprocess) ms, the highest frame rate the model sustains.", "",
              "## Latency per stage (p50 / p99 ms)", "", "| model | " + " | ".join(STAGE_FIELDS) + " |",
              "|---|" + "---:|" * len(STAGE_FIELDS)]
    for m in report["models"]:
        cells = [f"{_fmt(m['latency_ms'][s]['p50_ms'], 2)} / {_fmt(m['latency_ms'][s]['p99_ms'], 2)}" for s in STAGE_FIELDS]
        lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
    columns = SIZES_AND_BANDS
    lines += ["", "## AP by object size and image band", "",
              "COCO's object sizes (< 32x32 px, >= 96x96 px), and the boxes centred in the image's lower, middle and "
              "upper third (with a forward camera, near objects sit low).", "",
              "| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for m in report["models"]:
        lines.append(f"| {m['name']} | " + " | ".join(_fmt(m.get("ap_by_size_band", {}).get(c)) for c in columns) + " |")
    classes = sorted({name for m in report["models"] for name in m["per_class_ap"]})
    if classes:
        lines += ["", "## AP per class", "", "| class | " + " | ".join(m["name"] for m in report["models"]) + " |",
                  "|---|" + "---:|" * len(report["models"])]
        for name in classes:
            lines.append(f"| {name} | " + " | ".join(_fmt(m["per_class_ap"].get(name)) for m in report["models"]) + " |")
    lines += ["", "Files: `frames.csv` (every frame), `latency_over_time.png`, `latency_histogram.png`, "
              "`precision_recall.png`, `report.json`."]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, results: Sequence[ModelResult]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "frame", "stamp_ns", *STAGE_FIELDS, "end_to_end_ms", "detections"])
    for result in results:
        for position, frame in enumerate(result.frames):
            end_to_end = result.end_to_end_ms[position] if position < len(result.end_to_end_ms) else ""
            writer.writerow([result.name, frame.index, frame.stamp_ns, *(f"{getattr(frame, s):.3f}" for s in STAGE_FIELDS),
                             f"{end_to_end:.3f}" if end_to_end != "" else "", frame.detections])
    write_text_atomic(path, buffer.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def _reference(result: ModelResult) -> list[float]:
    return result.end_to_end_ms if result.end_to_end_ms else [f.total_ms for f in result.frames]


def plot_latency_over_time(results: Sequence[ModelResult], budget_ms: float, path: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(11, 4))
    for result in results:
        axis.plot([f.index for f in result.frames][: len(_reference(result))], _reference(result), linewidth=1, label=result.name)
    axis.axhline(budget_ms, color="red", linestyle="--", label=f"budget {budget_ms:g} ms")
    axis.set_xlabel("frame")
    axis.set_ylabel("latency (ms)")
    axis.set_title("latency per frame")
    axis.legend(loc="upper right")
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def plot_latency_histogram(results: Sequence[ModelResult], budget_ms: float, path: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4))
    values = [np.asarray(_reference(r), float) for r in results]
    top = max([budget_ms * 1.2] + [float(v.max()) for v in values if v.size])
    bins = np.linspace(0, top, 50)
    for result, latencies in zip(results, values):
        axis.hist(latencies, bins=bins, alpha=0.55, label=result.name)
    axis.axvline(budget_ms, color="red", linestyle="--", label=f"budget {budget_ms:g} ms")
    axis.set_xlabel("latency (ms)")
    axis.set_ylabel("frames")
    axis.legend()
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def plot_precision_recall(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 5))
    recall = np.linspace(0, 1, 101)
    for summary in summaries:
        precision = np.asarray(summary["precision_at_iou50"], float)
        if precision.size == recall.size:
            axis.plot(recall, precision, label=f"{summary['name']} (AP50 {_fmt(summary['ap50'])})")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision (IoU 0.5, mean over classes)")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.legend(loc="lower left")
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
