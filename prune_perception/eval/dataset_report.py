"""``prune-perception evaluate --model M --data D``: any model file on any labelled folder or COCO
json, as ``yolo val`` does, with no compress configuration. Writes ``report.md``, ``report.json``
and a precision-recall plot; several models are compared on the same images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from prune_perception.data.datasets import evenly_spaced, load_labelled_source
from prune_perception.errors import PrunePerceptionError
from prune_perception.eval.coco_eval import BANDS, CocoMetrics
from prune_perception.eval.detector_eval import evaluate_on_dataset
from prune_perception.files import atomic_output, write_json_atomic, write_text_atomic
from prune_perception.runtime.class_names import resolve_classes
from prune_perception.runtime.detector import Detector


def class_ids_for(classes: Sequence[str] | None, model_path: str | Path) -> tuple[int, ...] | None:
    """``--classes`` (names or ids) as ids in the model's published id space (its teacher's, for a
    specialized model; its sidecar's, or the runtime's defaults without one). A name the model does
    not know is a clear error."""
    if not classes:
        return None
    detector = Detector(model_path, device="cpu")
    names = detector.metadata.names_by_id
    detector.close()
    table = [names.get(i, f"class_{i}") for i in range(max(names) + 1)]
    requested = [int(item) if str(item).isdigit() else str(item) for item in classes]
    return resolve_classes(requested, table).teacher_ids


def evaluate_models(models: dict[str, str], data: str | Path, output: Path, images: str | Path | None = None,
                    classes: Sequence[str] | None = None, agnostic: bool = False, max_images: int = 0,
                    progress: bool = True) -> dict[str, object]:
    for name, path in models.items():
        if not Path(path).exists():
            raise PrunePerceptionError(f"model {name}: {path} does not exist")
    items, _ = load_labelled_source(data, images)
    items = evenly_spaced(items, max_images)
    if not items:
        raise PrunePerceptionError(f"{data} holds no labelled images")
    ids = class_ids_for(classes, next(iter(models.values())))
    results: dict[str, CocoMetrics] = {}
    for name, path in models.items():
        results[name] = evaluate_on_dataset(path, items, progress=progress, classes=ids, agnostic=agnostic)
    output.mkdir(parents=True, exist_ok=True)
    summary = {
        "data": str(data), "images": len(items), "classes": list(ids) if ids else "all", "agnostic": agnostic,
        "models": [{"name": name, "model": str(models[name]), "ap": m.ap, "ap50": m.ap50, "ap75": m.ap75,
                    "ap_small": m.ap_small, "ap_medium": m.ap_medium, "ap_large": m.ap_large, "ar100": m.ar100,
                    "ap_by_band": {band: m.by_size_and_band()[band] for band in BANDS},
                    "per_class_ap": m.per_class_ap, "ground_truth": m.num_ground_truth,
                    "predictions": m.num_predictions} for name, m in results.items()],
    }
    write_json_atomic(output / "report.json", summary)
    _plot_precision_recall(results, output / "precision_recall.png")
    write_text_atomic(output / "report.md", _markdown(summary))
    return summary


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _markdown(summary: dict) -> str:
    classes = summary["classes"]
    lines = ["# Evaluation", "",
             f"`{summary['data']}`: {summary['images']} images; classes scored: "
             f"{'all' if classes == 'all' else ', '.join(map(str, classes))}"
             f"{' (class-agnostic)' if summary['agnostic'] else ''}. Detections of other classes are left out.", "",
             "AP small/medium/large: COCO's object sizes (< 32x32 px, >= 96x96 px). AP lower/middle/upper: the boxes "
             "centred in that third of the image (with a forward camera, near objects sit low).", "",
             "| model | AP | AP50 | AP75 | AP small | AP medium | AP large | AP lower | AP middle | AP upper | AR100 "
             "| boxes | detections |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in summary["models"]:
        bands = " | ".join(_fmt(m["ap_by_band"].get(band)) for band in BANDS)
        lines.append(f"| {m['name']} | {_fmt(m['ap'])} | {_fmt(m['ap50'])} | {_fmt(m['ap75'])} | {_fmt(m['ap_small'])} | "
                     f"{_fmt(m['ap_medium'])} | {_fmt(m['ap_large'])} | {bands} | {_fmt(m['ar100'])} | "
                     f"{m['ground_truth']} | {m['predictions']} |")
    names = sorted({c for m in summary["models"] for c in m["per_class_ap"]})
    if names:
        lines += ["", "Per class AP:", "", "| class | " + " | ".join(m["name"] for m in summary["models"]) + " |",
                  "|---|" + "---:|" * len(summary["models"])]
        lines += [f"| {c} | " + " | ".join(_fmt(m["per_class_ap"].get(c, math.nan)) for m in summary["models"]) + " |"
                  for c in names]
    lines += ["", "![precision-recall at IoU 0.5](precision_recall.png)", ""]
    return "\n".join(lines)


def _plot_precision_recall(results: dict[str, CocoMetrics], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 5))
    recall = np.linspace(0, 1, 101)
    for name, metrics in results.items():
        if metrics.precision_at_iou50:
            axis.plot(recall, metrics.precision_at_iou50, label=f"{name} (AP50 {_fmt(metrics.ap50)})")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision at IoU 0.5")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
