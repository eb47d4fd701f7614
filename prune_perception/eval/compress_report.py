"""The report of a compression run: what each model costs in accuracy and gains in measured latency."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from prune_perception.compress.sparsity import SPARSITY_RUNTIME_NOTE
from prune_perception.files import atomic_output, write_json_atomic, write_text_atomic

STRUCTURED_NOTE = (
    "Structured (channel) pruning shrinks the dense layers, so every runtime runs the student faster; "
    "that is what the speed-ups above measure."
)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_compress_report(output_dir: Path, records: Sequence[Any], histories: dict[str, list[dict]],
                          config: dict[str, Any], int8_notes: Sequence[str], engine_notes: Sequence[str],
                          sparsity_notes: Sequence[str] = (), teacher_as_given: dict[str, Any] | None = None,
                          ) -> dict[str, Any]:
    teacher = records[0]
    rows = [asdict(record) for record in records]
    for row in rows:
        row["ap_change_points"] = (
            None if row["ap"] is None or teacher.ap is None else 100 * (row["ap"] - teacher.ap)
        )
    int8_notes = [*int8_notes, *_int8_speed_notes(rows)]
    summary = {
        "models": rows,
        "int8": list(int8_notes),
        "tensorrt": list(engine_notes),
        "sparsity": {"students": list(sparsity_notes), "note": f"{STRUCTURED_NOTE} {SPARSITY_RUNTIME_NOTE}"},
        "teacher_as_given": teacher_as_given,
        "config": config,
        "training": {name: history[-1] if history else None for name, history in histories.items()},
    }
    write_json_atomic(output_dir / "report.json", summary)
    plot_pareto(records, output_dir / "pareto.png")
    if any(histories.values()):
        plot_training_curves(histories, output_dir / "training_curves.png")

    table = [
        "| model | channel ratio | params | MACs (G) | file MB | AP | AP50 | AP change (points) | fidelity AP | "
        "latency p50 ms | latency p99 ms | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        table.append(
            f"| {row['name']} | {row['channel_ratio']:.2f} | {_fmt(row['params'])} | "
            f"{_fmt(row['macs'] / 1e9 if row['macs'] else None, 3)} | {row['file_mb']:.2f} | {_fmt(row['ap'])} | "
            f"{_fmt(row['ap50'])} | {_fmt(row['ap_change_points'], 1)} | {_fmt(row['fidelity_ap'])} | "
            f"{_fmt(row['latency_p50_ms'], 2)} | {_fmt(row['latency_p99_ms'], 2)} | {_fmt(row['speedup'], 2)}x |"
        )
    validation = config["data"]
    lines = [
        "# Compression report", "",
        f"Teacher: `{config['teacher']['onnx'] or config['teacher']['checkpoint']}` ({config['teacher']['variant']}). "
        f"Accuracy: COCO AP on the held-out labelled split ({validation['validation_fraction']:.0%} of "
        f"`{validation['labelled']}`). Fidelity: AP against the teacher's detections (score >= 0.3) on "
        "unlabelled frames held out of training. Latency: model inference on onnxruntime CPU, all models "
        "interleaved in one run; speed-up is the teacher's p50 over the model's.", "",
        *table, "",
        *([_as_given_line(teacher_as_given, teacher.latency_p50_ms), ""] if teacher_as_given else []),
        "![accuracy vs latency](pareto.png)", "",
        "## INT8", "",
        *(f"- {note}" for note in int8_notes or ["not run"]), "",
        "## TensorRT", "", *(f"- {note}" for note in engine_notes), "",
        "## Sparsity", "", *(f"- {note}" for note in sparsity_notes or ["no sparse student (prune.sparsity: null)"]), "",
        STRUCTURED_NOTE, SPARSITY_RUNTIME_NOTE, "",
    ]
    if any(histories.values()):
        lines += ["## Training", "", "![training curves](training_curves.png)", ""]
    write_text_atomic(output_dir / "report.md", "\n".join(lines))
    return summary


def _as_given_line(as_given: dict[str, Any], teacher_p50_ms: float | None) -> str:
    return (f"The teacher row is this run's own export of the teacher, on prune_perception's onnxruntime backend. "
            f"The teacher file as given (`{as_given['onnx']}`), in an onnxruntime session with default options, ran "
            f"at {as_given['latency_p50_ms']:.2f} ms p50 (p99 {as_given['latency_p99_ms']:.2f}) in the same run, against "
            f"{_fmt(teacher_p50_ms, 2)} ms: the deployment path alone is {as_given['teacher_speedup']:.2f}x faster. "
            "Against the file as given, multiply every speed-up above by that factor.")


def _int8_speed_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Where an onnxruntime INT8 file measured slower than its own FP32 model, say so: on that
    backend the FP32 file is the one to deploy. Q/DQ around the convs kept in float costs more
    than INT8 saves on CPUs where depthwise convs dominate."""
    by_name = {row["name"]: row for row in rows}
    notes = []
    for row in rows:
        fp32 = by_name.get(row["name"].removesuffix(" int8") + " distilled") if row["kind"] == "int8" else None
        if fp32 and row["latency_p50_ms"] and fp32["latency_p50_ms"] and row["latency_p50_ms"] > fp32["latency_p50_ms"]:
            notes.append(f"{row['name']} is slower than its FP32 model on onnxruntime CPU ({row['latency_p50_ms']:.2f} "
                         f"against {fp32['latency_p50_ms']:.2f} ms p50): on this backend, deploy the FP32 file")
    return notes


def plot_pareto(records: Sequence[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5.5))
    markers = {"teacher": ("*", "black"), "pruned": ("x", "tab:gray"), "distilled": ("o", "tab:blue"), "int8": ("s", "tab:orange"),
               "int8_modelopt": ("D", "tab:red")}
    points = []
    for record in records:
        if record.ap is None or record.latency_p50_ms is None:
            continue
        marker, color = markers[record.kind]
        axis.scatter(record.latency_p50_ms, record.ap, marker=marker, color=color, s=80, label=record.kind)
        axis.annotate(record.name, (record.latency_p50_ms, record.ap), textcoords="offset points", xytext=(5, 5), fontsize=8)
        points.append((record.latency_p50_ms, record.ap))
    front, best = [], -1.0
    for latency, ap in sorted(points, key=lambda point: (point[0], -point[1])):  # ties: the better AP first
        if ap > best:
            front.append((latency, ap))
            best = ap
    if len(front) > 1:
        axis.plot(*np.asarray(front).T, linestyle="--", color="tab:green", label="Pareto front")
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axis.legend(unique.values(), unique.keys())
    axis.set_xlabel("measured latency p50 (ms, onnxruntime CPU)")
    axis.set_ylabel("COCO AP (held-out split)")
    axis.set_title("accuracy against measured latency")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def plot_training_curves(histories: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, lr_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, history in histories.items():
        if not history:
            continue
        steps = [h["step"] for h in history]
        losses = np.asarray([h["loss"] for h in history])
        window = max(1, len(losses) // 20)
        smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
        loss_axis.plot(steps[: len(smoothed)], smoothed, label=name)
        lr_axis.plot(steps, [h["lr"] for h in history], label=name)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss (moving average)")
    loss_axis.legend()
    lr_axis.set_xlabel("step")
    lr_axis.set_ylabel("learning rate")
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
