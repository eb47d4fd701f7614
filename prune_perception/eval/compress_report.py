"""The report of a compression run: what each model costs in accuracy and gains in measured latency."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from prune_perception.eval.coco_eval import SIZES_AND_BANDS
from prune_perception.files import atomic_output, write_json_atomic, write_text_atomic

SPARSITY_RUNTIME_NOTE = (
    "Sparse weights keep the dense shapes, so onnxruntime on a CPU (and any dense GPU kernel) runs "
    "them at the dense speed: the measured speed-up is about 1.0x by construction. 2:4 sparsity pays "
    "off only in TensorRT on sparse tensor cores (Ampere or newer, built with SPARSE_WEIGHTS), for the "
    "layers TensorRT times faster as sparse; depthwise layers (most of YOLOX-Nano's) cannot hold the "
    "pattern and stay dense. Unstructured "
    "sparsity is not accelerated by any runtime used here."
)

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
                          sparsity_notes: Sequence[str] = (), run_facts: dict[str, Any] | None = None,
                          extra_sections: Sequence[str] = ()) -> dict[str, Any]:
    """``report.md``/``report.json`` and the plots of one run. Every sentence is computed from it."""
    run_facts = run_facts or {}
    rows = [asdict(record) for record in records]
    by_name = {row["name"]: row for row in rows}
    teacher = by_name.get("teacher camera", by_name.get("teacher", rows[0]))
    for row in rows:
        row["ap_change_points_by_set"] = {
            name: 100 * (value - teacher["ap_by_set"][name])
            for name, value in row["ap_by_set"].items() if _number(value) and _number(teacher["ap_by_set"].get(name))}
        row["ap_change_points"] = (None if not _number(row["ap"]) or not _number(teacher["ap"])
                                   else 100 * (row["ap"] - teacher["ap"]))
    int8_notes = [*int8_notes, *_int8_speed_notes(rows)]
    sparse_note = f"{STRUCTURED_NOTE} {SPARSITY_RUNTIME_NOTE} {_sparse_engine_note(engine_notes, sparsity_notes)}"
    given = by_name.get("teacher as given")
    summary = {
        "models": rows,
        "int8": list(int8_notes),
        "tensorrt": list(engine_notes),
        "sparsity": {"students": list(sparsity_notes), "note": sparse_note.strip()},
        "teacher_as_given": None if given is None else {
            "onnx": given["onnx"], "latency_p50_ms": given["latency_p50_ms"], "latency_p99_ms": given["latency_p99_ms"],
            "teacher_speedup": by_name["teacher"]["speedup_vs_given"]},
        "run": run_facts,
        "config": config,
        "training": {name: history[-1] if history else None for name, history in histories.items()},
    }
    write_json_atomic(output_dir / "report.json", summary)
    first_set = next(iter(rows[0]["ap_by_set"]), None) if rows else None
    plot_pareto(records, output_dir / "pareto.png", first_set)
    if any(histories.values()):
        plot_training_curves(histories, output_dir / "training_curves.png")

    sets = list(dict.fromkeys(name for row in rows for name in row["ap_by_set"]))
    table = [
        "| model | input HxW | params | MACs (G) | file MB | " + "".join(f"AP {name} | " for name in sets)
        + "fidelity AP | p50 ms | p99 ms | vs as given | vs row above | vs teacher |",
        "|---|---|---:|---:|---:|" + "---:|" * len(sets) + "---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        changes = row["ap_change_points_by_set"]
        cells = "".join(
            f"{_fmt(row['ap_by_set'].get(name))}"
            + (f" ({changes[name]:+.1f})" if name in changes and row is not teacher and row["kind"] not in
               ("as_given", "teacher") else "") + " | " for name in sets)
        above = f"{_fmt(row['speedup_vs_previous'], 2)}x ({row['previous']})" if row["previous"] else "-"
        table.append(
            f"| {row['name']} | {row['input_hw']} | {_fmt(row['params'])} | "
            f"{_fmt(row['macs'] / 1e9 if row['macs'] else None, 3)} | {row['file_mb']:.2f} | {cells}"
            f"{_fmt(row['fidelity_ap'])} | {_fmt(row['latency_p50_ms'], 2)} | {_fmt(row['latency_p99_ms'], 2)} | "
            f"{_fmt(row['speedup_vs_given'], 2)}x | {above} | {_fmt(row['speedup'], 2)}x |"
        )
    validation = run_facts.get("validation", [])
    described = "; ".join(f"**{v['name']}** ({v['images']} held-out images; "
                          f"{'all classes' if v['classes'] == 'all' else ', '.join(v['classes'])}"
                          f"{', class-agnostic' if v['agnostic'] else ''})" for v in validation) or "none"
    shape = run_facts.get("input") or {}
    classes = run_facts.get("classes")
    lines = [
        "# Compression report", "",
        f"Teacher: `{config['teacher']['onnx'] or config['teacher']['checkpoint']}` ({config['teacher']['variant']}). "
        f"Network input of the students: {shape.get('height')}x{shape.get('width')} (HxW, {shape.get('source')}"
        + (f", camera {shape['camera_width']}x{shape['camera_height']}" if shape.get("camera_width") else "") + "). "
        + (f"The students keep {len(classes['names'])} of the teacher's classes: {', '.join(classes['names'])} "
           f"(teacher ids {', '.join(map(str, classes['teacher_ids']))}, kept in their sidecars). " if classes else "")
        + f"Trained on {run_facts.get('training_images', 'n/a')} images.", "",
        f"Accuracy: COCO AP on each validation set, never trained on, each scored on the classes it labels: {described}. "
        "AP changes in brackets are points against the teacher at the same input"
        f"{' (teacher camera)' if 'teacher camera' in by_name else ''}. Fidelity: AP against that teacher's detections "
        f"(score >= 0.3) on {run_facts.get('fidelity_frames', 0)} unlabelled frames held out of training. Latency: "
        "model inference on onnxruntime CPU, every model interleaved in one run, each fed the same frames "
        "preprocessed for its own input; speed-ups are p50 ratios.", "",
        *table, "",
        *_ladder_sentences(by_name), "",
        "![accuracy vs latency](pareto.png)", "",
        *extra_sections,
        "## INT8", "",
        *(f"- {note}" for note in int8_notes or ["not run"]), "",
        *_size_band_section(rows, sets),
        "## TensorRT", "", *(f"- {note}" for note in engine_notes), "",
        "## Sparsity", "", *(f"- {note}" for note in sparsity_notes or ["no sparse student (prune.sparsity: null)"]), "",
        sparse_note.strip(), "",
    ]
    if any(histories.values()):
        lines += ["## Training", "", *_training_sentences(histories), "", "![training curves](training_curves.png)", ""]
    if run_facts.get("training_notes"):
        lines += ["## Interrupted training", "", *(f"- {note}" for note in run_facts["training_notes"]), ""]
    write_text_atomic(output_dir / "report.md", "\n".join(lines))
    return summary


def _size_band_section(rows: Sequence[dict[str, Any]], sets: Sequence[str]) -> list[str]:
    """AP by object size (COCO's bands) and by image third, per validation set, for every model."""
    lines = ["## AP by object size and image band", "",
             "COCO AP of small (< 32x32 px), medium and large (>= 96x96 px) objects, and of the boxes centred in the "
             "image's lower, middle and upper third: with a forward camera, near objects sit low in the image.", ""]
    columns = SIZES_AND_BANDS
    for name in sets:
        lines += [f"**{name}**", "", "| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        lines += [f"| {row['name']} | " + " | ".join(_fmt(row.get("ap_by_size_band", {}).get(name, {}).get(column))
                                                   for column in columns) + " |" for row in rows]
        lines.append("")
    return lines


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _ladder_sentences(by_name: dict[str, dict[str, Any]]) -> list[str]:
    """What each step of the ladder gained, from this run's measurements."""
    sentences = []
    given, teacher, camera = by_name.get("teacher as given"), by_name.get("teacher"), by_name.get("teacher camera")
    if given and teacher and _number(teacher["speedup_vs_given"]):
        sentences.append(f"- Our export of the same teacher on our backend: {teacher['speedup_vs_given']:.2f}x against "
                         f"the file as given ({teacher['latency_p50_ms']:.2f} against {given['latency_p50_ms']:.2f} ms p50).")
    if camera and _number(camera["speedup_vs_previous"]):
        sentences.append(f"- The camera-shaped input ({camera['input_hw']}): {camera['speedup_vs_previous']:.2f}x against "
                         f"the square export, {_fmt(camera['speedup_vs_given'], 2)}x against the file as given.")
    best = max((row for row in by_name.values() if row["kind"] in ("distilled", "int8") and _number(row["speedup_vs_given"])),
               key=lambda row: row["speedup_vs_given"], default=None)
    if best is not None:
        changes = ", ".join(f"{name} {value:+.1f}" for name, value in best["ap_change_points_by_set"].items())
        sentences.append(f"- Fastest recovered model: {best['name']}, {best['speedup_vs_given']:.2f}x against the file "
                         f"as given; AP change (points) against the teacher at its input: {changes or 'n/a'}.")
    return sentences


def _training_sentences(histories: dict[str, list[dict]]) -> list[str]:
    sentences = []
    for name, history in histories.items():
        if not history:
            continue
        first, last = history[0], history[-1]
        sentences.append(f"- {name}: {int(last['step']) + 1} steps, loss {first['loss']:.4f} at the first step, "
                         f"{last['loss']:.4f} at the last.")
    return sentences


def _sparse_engine_note(engine_notes: Sequence[str], sparsity_notes: Sequence[str]) -> str:
    """Whether this run could build the 2:4 engines that would show the sparse gain."""
    if not sparsity_notes:
        return ""
    skipped = [note for note in engine_notes if note.startswith("TensorRT engines:")]
    if skipped:
        return f"This run built no TensorRT engine ({skipped[0].removeprefix('TensorRT engines: ')}), so that gain is unmeasured."
    return "This run built TensorRT engines (listed above); time them on the target GPU to measure the sparse gain."


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


def plot_pareto(records: Sequence[Any], path: Path, set_name: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5.5))
    markers = {"as_given": ("P", "tab:brown"), "teacher": ("*", "black"), "teacher_camera": ("*", "tab:purple"),
               "pruned": ("x", "tab:gray"), "distilled": ("o", "tab:blue"), "int8": ("s", "tab:orange"),
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
    axis.set_ylabel(f"COCO AP, {set_name or 'held-out split'}")
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


def plot_channels(teacher: dict[str, int], students: dict[str, dict[str, int]], path: Path) -> None:
    """Output channels of every convolution: the teacher's as bars, each student's as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in teacher if any(name in channels for channels in students.values())]
    figure, axis = plt.subplots(figsize=(max(10, 0.12 * len(names)), 5))
    positions = np.arange(len(names))
    axis.bar(positions, [teacher[n] for n in names], color="lightgray", label="teacher")
    for label, channels in students.items():
        axis.plot(positions, [channels.get(n, np.nan) for n in names], marker="o", markersize=3, linestyle="none",
                  label=label)
    axis.set_xticks(positions[::4])
    axis.set_xticklabels([n.replace("backbone.", "") for n in names[::4]], rotation=90, fontsize=6)
    axis.set_ylabel("output channels")
    axis.set_title("channels per convolution: teacher and pruned students")
    axis.legend()
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def plot_sensitivity(scan: dict[str, Any], path: Path) -> None:
    """The damage of pruning each dependency group alone, at each scanned ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = scan["groups"]
    figure, axis = plt.subplots(figsize=(max(10, 0.16 * len(groups)), 5))
    positions = np.arange(len(groups))
    levels = max(len(g["levels"]) for g in groups) if groups else 0
    width = 0.8 / max(levels, 1)
    for index in range(levels):
        values = [g["levels"][index]["damage"] if index < len(g["levels"]) else np.nan for g in groups]
        axis.bar(positions + index * width, values, width, label=f"level {index + 1} (ratio {scan['ratios'][index]:.2f})"
                 if index < len(scan["ratios"]) else f"level {index + 1}")
    axis.set_yscale("log")
    axis.set_xticks(positions)
    axis.set_xticklabels([g["root"].replace("backbone.", "") for g in groups], rotation=90, fontsize=6)
    axis.set_ylabel("output damage (relative squared change)")
    axis.set_title(f"sensitivity of each dependency group, alone, on {scan['images']} calibration images")
    axis.legend()
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def pruning_sections(output_dir: Path, teacher_channels: dict[str, int], students: dict[str, dict[str, Any]]) -> list[str]:
    """The report's pruning section: where each student's channels went, and the sensitivity scan."""
    lines = ["## Pruning", ""]
    for label, pruning in students.items():
        dropped = pruning.get("dropped_blocks") or []
        rounds = pruning.get("allocation_rounds") or []
        text = f"- {label}: {pruning.get('allocation', 'uniform')} allocation, {pruning['macs_fraction']:.0%} of the MACs left"
        if rounds:
            last = rounds[-1]
            text += (f"; {len(rounds)} allocation round(s), the last estimated {last['estimated_speedup']:.2f}x and "
                     f"measured {last['measured_speedup']:.2f}x, {last['groups_cut']} groups cut")
        if dropped:
            text += f"; residual blocks removed: {', '.join(dropped)}"
        lines.append(text + ".")
    channels = {label: pruning["channels"] for label, pruning in students.items() if pruning.get("channels")}
    if channels:
        plot_channels(teacher_channels, channels, output_dir / "channels.png")
        lines += ["", "![channels per layer](channels.png)"]
    scan = output_dir / "sensitivity.json"
    if scan.exists():
        import json

        data = json.loads(scan.read_text())
        plot_sensitivity(data, output_dir / "sensitivity.png")
        worst = sorted(data["groups"], key=lambda g: -g["levels"][-1]["damage"])[:3]
        lines += ["", f"Sensitivity scan: {len(data['groups'])} dependency groups at ratios "
                  f"{', '.join(f'{r:.2f}' for r in data['ratios'])} on {data['images']} images. The most sensitive: "
                  + ", ".join(f"{g['root']} ({g['levels'][-1]['damage']:.3f} at {g['levels'][-1]['keep']} of "
                              f"{g['channels']} channels)" for g in worst) + ".", "",
                  "![sensitivity per group](sensitivity.png)"]
    blocks = output_dir / "blocks.json"
    if blocks.exists():
        import json

        ranked = json.loads(blocks.read_text())["ranked"]
        lines += ["", "Residual blocks, by the output damage of removing each alone: "
                  + ", ".join(f"{b['name']} {b['damage']:.3f}" for b in ranked) + "."]
    return lines + [""]
