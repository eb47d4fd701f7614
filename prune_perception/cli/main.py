"""``prune-perception`` command line. Library errors become one-line messages and exit codes here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from prune_perception.errors import PrunePerceptionError

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 3
"""A step that needs what this machine lacks (TensorRT, a GPU) was skipped."""


def _missing_inputs(paths: dict[str, Path]) -> list[str]:
    return [f"{description}: {path}" for description, path in paths.items() if not path.exists()]


def cmd_live_demo(args: argparse.Namespace) -> int:
    """Run detector_node live over a video and print/write the latency summary."""
    missing = _missing_inputs({"model": args.model, "video": args.video})
    if missing:
        print("live-demo cannot start, missing input(s):\n  " + "\n  ".join(missing), file=sys.stderr)
        print(
            "The default inputs come from the shared data folder (../shared/data: models/yolox_nano.onnx, "
            "video/solidWhiteRight.mp4); pass --model and --video to use others.", file=sys.stderr,
        )
        return EXIT_USAGE

    import rclpy

    from prune_perception.eval.latency_report import format_summary, summarize_latency_run, write_latency_report
    from prune_perception.ros.live_session import LiveSessionError, run_live_session
    from prune_perception.ros.node_main import apply_fastdds_large_image_profile
    from prune_perception.ros.package_paths import config_path

    apply_fastdds_large_image_profile()
    params_files = [config_path("detector.yaml"), config_path(f"presets/{args.preset}.yaml")]
    params = {"latency_budget_ms": float(args.budget_ms)} if args.budget_ms else {}
    rclpy.init()
    try:
        print(f"live-demo: {args.model.name} on {args.video.name}, preset {args.preset}; logs in {args.output}")
        result = run_live_session(
            args.model, args.video, args.output, detector_params=params, detector_params_files=params_files,
            frame_rate_hz=args.frame_rate, max_frames=args.max_frames,
        )
    except LiveSessionError as exc:
        print(f"live-demo failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        rclpy.try_shutdown()

    diagnostics = result.final_diagnostics.values if result.final_diagnostics else {}
    budget_ms = float(diagnostics.get("latency_budget_ms", args.budget_ms or 0.0))
    labels = [d.results[0].hypothesis.class_id for r in result.detections for d in r.msg.detections if d.results]
    summary = summarize_latency_run(result.latencies, result.frames_published, budget_ms, labels, diagnostics)
    summary["settings"] = result.settings
    title = f"detector_node live: {args.model.name} on {args.video.name}"
    paths = write_latency_report(summary, result.latencies, args.output, title)
    print(format_summary(summary, title))
    print("report: " + ", ".join(str(p) for p in paths))
    if summary["frames"]["processed"] == 0:
        print("live-demo failed: the node published no detections", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    """Run the detector on image files and print the detections as JSON lines."""
    import cv2

    from prune_perception.runtime.detector import Detector, DetectorConfig

    detector = Detector(
        args.model, backend=args.backend, device=args.device,
        config=DetectorConfig(score_threshold=args.score_threshold, nms_threshold=args.nms_threshold),
    )
    status = 0
    for path in args.images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            print(f"cannot read image {path}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        result = detector.detect(image)
        print(json.dumps({
            "image": str(path),
            "inference_ms": round(result.timings.inference_ms, 3),
            "detections": [
                {"class_id": d.class_id, "class_name": d.class_name, "score": round(d.score, 4),
                 "box_xyxy": [round(v, 1) for v in d.box_xyxy]}
                for d in result.detections
            ],
        }))
    return status


def cmd_compress(args: argparse.Namespace) -> int:
    """Run the whole compression pipeline (or resume it) and print the report table."""
    from prune_perception.compress.config import load_compress_config
    from prune_perception.compress.pipeline import CompressionRun

    config = load_compress_config(args.config, args.set or [])
    summary = CompressionRun(config, progress=not args.no_progress).run()
    print((Path(config.output_dir) / "report.md").read_text())
    return 0 if summary["models"] else EXIT_FAILED


def cmd_stage(args: argparse.Namespace) -> int:
    """One stage of ``compress`` on its own, over the same output folder."""
    from prune_perception.compress.config import load_compress_config
    from prune_perception.compress.pipeline import CompressionRun

    config = load_compress_config(args.config, args.set or [])
    CompressionRun(config, progress=not args.no_progress).run_stage(args.command)
    if args.command == "evaluate":
        print((Path(config.output_dir) / "report.md").read_text())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate --model M --data D``: any model on any labelled set; else the compress stage."""
    if not args.model:
        if args.data:
            print("evaluate: --data needs --model (or give --config for a compress run's evaluation)", file=sys.stderr)
            return EXIT_USAGE
        return cmd_stage(args)
    if not args.data:
        print("evaluate: --model needs --data (a YOLO images folder or a COCO json)", file=sys.stderr)
        return EXIT_USAGE
    from prune_perception.eval.dataset_report import evaluate_models

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    evaluate_models(_named_models(args.model), args.data, args.output, images=args.images, classes=classes,
                    agnostic=args.agnostic, max_images=args.max_images, progress=not args.no_progress)
    print((args.output / "report.md").read_text())
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    """TensorRT engines: for one ONNX (``--onnx``), or for every model of a compress run (``--config``)."""
    if args.onnx is None:
        return cmd_stage(args)
    from prune_perception.bags.frame_sources import iter_unlabelled_frames
    from prune_perception.export.tensorrt_engine import EngineBuildConfig, build_engine, tensorrt_unavailable_reason
    from prune_perception.runtime.metadata import load_sidecar
    from prune_perception.runtime.preprocess import Preprocessor

    reason = tensorrt_unavailable_reason()
    if reason:
        print(f"prune-perception build-engine: skipped, {reason}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    metadata = load_sidecar(args.onnx)
    if metadata is None:
        raise PrunePerceptionError(f"{args.onnx} has no sidecar (export it with prune-perception export)")
    calibration = []
    if args.calibration:
        preprocessor = Preprocessor(metadata.input)
        calibration = [preprocessor(frame)[0] for frame in iter_unlabelled_frames([str(args.calibration)], args.calibration_images)]
    engine = build_engine(args.onnx, args.output or args.onnx.with_suffix(".engine"), EngineBuildConfig(
        precision=args.precision, workspace_mb=args.workspace_mb, timing_cache=args.timing_cache,
        dla_core=args.dla_core, calibrator=args.calibrator, sparse_weights=args.sparse_weights,
        max_batch=args.max_batch), calibration)
    print(engine)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: synthetic drive -> sample teacher -> compress -> live replay -> report."""
    from prune_perception.mission import MissionConfig, run_mission

    changes = {"output_dir": args.output, "real_data": args.real_data}
    if args.drive_frames:
        changes["drive_frames"] = args.drive_frames
    config = MissionConfig.quick(**changes) if args.quick else MissionConfig(**changes)
    result = run_mission(config, progress=not args.no_progress)
    print(result["summary"])
    print(f"reports: {args.output / 'summary.md'}, {args.output / 'compress' / 'report.md'}, "
          f"{args.output / 'replay' / 'report.md'}")
    return 0


def cmd_train_sample(args: argparse.Namespace) -> int:
    """Train the sample teacher on synthetic scenes and print its training report."""
    from prune_perception.compress.sample_teacher import SampleTeacherConfig, train_sample_teacher

    config = SampleTeacherConfig(steps=args.steps, frames_per_seed=args.frames_per_seed, seed=args.seed)
    report = train_sample_teacher(args.output, config, progress=not args.no_progress)
    print((args.output / "training_report.md").read_text())
    return 0 if report["ap"] > 0 else EXIT_FAILED


def cmd_video_to_bag(args: argparse.Namespace) -> int:
    """Write a camera bag from a video, an image folder or a synthetic drive."""
    from prune_perception.bags.video_to_bag import video_to_bag
    from prune_perception.runtime.class_names import COCO_CLASSES

    if (args.source is None) == (args.synthetic_frames == 0):
        print("video-to-bag: give a SOURCE or --synthetic-frames N (not both)", file=sys.stderr)
        return EXIT_USAGE
    names = args.class_names.split(",") if args.class_names else list(COCO_CLASSES)
    summary = video_to_bag(args.source, args.output, fps=args.fps, max_frames=args.max_frames, storage=args.storage,
                           compressed=args.compressed, image_topic=args.topic, frame_id=args.frame_id,
                           class_names=names, ground_truth=not args.no_ground_truth,
                           synthetic_frames=args.synthetic_frames, seed=args.seed, overwrite=args.overwrite,
                           progress=not args.no_progress)
    print(f"wrote {summary.path}: {summary.frames} frames at {summary.fps:g} fps"
          + (", with ground truth" if summary.ground_truth else ""))
    return 0


def _named_models(specs: list[str]) -> dict[str, str]:
    """``name=path`` or ``path`` (named after the file) -> {name: path}."""
    models: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).stem
        if name in models:
            raise PrunePerceptionError(f"two models are named {name!r}; use name=path")
        models[name] = path
    return models


def cmd_eval_bag(args: argparse.Namespace) -> int:
    """Evaluate models on a bag (offline: direct Detector calls; live: through detector_node) and report."""
    from prune_perception.eval.bag_eval import TruthSource, evaluate_bag_offline
    from prune_perception.eval.bag_report import write_bag_report

    models = _named_models(args.model)
    missing = _missing_inputs({f"model {name}": Path(path) for name, path in models.items()} | {"bag": args.bag})
    if missing:
        print("eval-bag cannot start, missing input(s):\n  " + "\n  ".join(missing), file=sys.stderr)
        return EXIT_USAGE
    truth = TruthSource(kind=args.truth, topic=args.truth_topic, coco_json=args.coco_json, teacher_model=args.teacher)
    if args.mode == "live":
        from prune_perception.ros.bag_live_eval import evaluate_bag_live

        results, facts = evaluate_bag_live(args.bag, models, truth, args.output, image_topic=args.topic,
                                           rate=args.rate, budget_ms=args.budget_ms, max_frames=args.max_frames)
    else:
        results, facts = evaluate_bag_offline(args.bag, models, truth, image_topic=args.topic, max_frames=args.max_frames,
                                              backend=args.backend, device=args.device, progress=not args.no_progress,
                                              output_bag=args.output / "detections_bag" if args.output_bag else None)
    report = write_bag_report(args.output, results, facts, args.budget_ms)
    print((args.output / "report.md").read_text())
    return 0 if report["models"] else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune-perception", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the main job: synthetic drive, sample teacher, compress, live replay "
                               "through detector_node, side-by-side report (no shared data or GPU needed)")
    demo.add_argument("--output", type=Path, default=Path("runs/demo"))
    demo.add_argument("--real-data", type=Path, default=None,
                      help="a shared data folder: run on the real YOLOX-Nano, coco128 and the dashcam clip")
    demo.add_argument("--quick", action="store_true", help="scaled down (CI): short drive, few training steps")
    demo.add_argument("--drive-frames", type=int, default=0, help="frames of the replayed drive (0: default)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(handler=cmd_demo)

    live = commands.add_parser("live-demo", help="run detector_node live over a video and report latency")
    live.add_argument("--model", type=Path, default=Path("../shared/data/models/yolox_nano.onnx"))
    live.add_argument("--video", type=Path, default=Path("../shared/data/video/solidWhiteRight.mp4"))
    live.add_argument("--preset", default="desktop_cpu", choices=["desktop_cpu", "jetson_orin"])
    live.add_argument("--frame-rate", type=float, default=0.0, help="publish rate in Hz (0: the video's)")
    live.add_argument("--max-frames", type=int, default=0, help="frames of the video to play (0: all)")
    live.add_argument("--budget-ms", type=float, default=0.0, help="override the preset's latency budget")
    live.add_argument("--output", type=Path, default=Path("runs/live_demo"))
    live.set_defaults(handler=cmd_live_demo)

    compress = commands.add_parser("compress", help="prune, distil, quantize and export a detector, with a report")
    compress.add_argument("--config", type=Path, default=Path("config/compress.yaml"))
    compress.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override an option (repeatable)")
    compress.add_argument("--no-progress", action="store_true", help="no progress bars")
    compress.set_defaults(handler=cmd_compress)

    stage_help = {
        "prune": "compress stage 1: prune (or sparsify) the teacher into pruned.pt/.onnx per student",
        "distill": "compress stage 2: recover every pruned student by distillation/fine-tuning (resumable)",
        "export": "compress stage 3: ONNX of every recovered student, INT8 QDQ, ModelOpt Q/DQ",
        "build-engine": "compress stage 4: TensorRT engines (of a run's models, or of one --onnx)",
        "evaluate": "compress stage 5: AP, fidelity, interleaved latency; report.md/json and plots",
    }
    for name, text in stage_help.items():
        stage = commands.add_parser(name, help=text)
        stage.add_argument("--config", type=Path, default=Path("config/compress.yaml"))
        stage.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override an option (repeatable)")
        stage.add_argument("--no-progress", action="store_true", help="no progress bars")
        stage.set_defaults(handler=cmd_stage)
        if name == "evaluate":
            stage.add_argument("--model", action="append", metavar="[NAME=]PATH",
                               help="evaluate this model file (repeatable) on --data, with no compress config")
            stage.add_argument("--data", type=Path, default=None, help="a YOLO images folder or a COCO json")
            stage.add_argument("--images", type=Path, default=None, help="the images folder of a COCO json "
                               "(default: 'images' beside it)")
            stage.add_argument("--classes", default="", help="comma-separated class names or ids the set labels; "
                               "detections of other classes are not errors (default: all)")
            stage.add_argument("--agnostic", action="store_true", help="score all those classes as one")
            stage.add_argument("--max-images", type=int, default=0, help="at most this many images, evenly spaced")
            stage.add_argument("--output", type=Path, default=Path("runs/evaluate"))
            stage.set_defaults(handler=cmd_evaluate)
        if name == "build-engine":
            stage.add_argument("--onnx", type=Path, default=None, help="build this one model (it needs its sidecar)")
            stage.add_argument("--output", type=Path, default=None, help="engine path (default: beside the ONNX)")
            stage.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "int8"])
            stage.add_argument("--workspace-mb", type=int, default=2048)
            stage.add_argument("--timing-cache", type=Path, default=None)
            stage.add_argument("--dla-core", type=int, default=None)
            stage.add_argument("--calibrator", default="entropy", choices=["entropy", "minmax"])
            stage.add_argument("--calibration", type=Path, default=None,
                               help="images folder or video for implicit INT8 calibration (TensorRT 10.x, no Q/DQ)")
            stage.add_argument("--calibration-images", type=int, default=64)
            stage.add_argument("--sparse-weights", action="store_true", help="allow 2:4 sparse kernels")
            stage.add_argument("--max-batch", type=int, default=1, help="optimization profile up to this batch "
                               "(the camera count; the ONNX needs a dynamic batch axis)")
            stage.set_defaults(handler=cmd_build_engine)

    sample = commands.add_parser("train-sample", help="train the sample teacher (small YOLOX) on synthetic scenes")
    sample.add_argument("--output", type=Path, default=Path("runs/sample_teacher"))
    sample.add_argument("--steps", type=int, default=2000)
    sample.add_argument("--frames-per-seed", type=int, default=40, help="training frames from each of 24 sequences")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--no-progress", action="store_true", help="no progress bars")
    sample.set_defaults(handler=cmd_train_sample)

    to_bag = commands.add_parser("video-to-bag", help="write a camera rosbag2 (MCAP/sqlite3) from a video, "
                                 "an image folder, or a synthetic drive with ground truth")
    to_bag.add_argument("source", type=Path, nargs="?", help="video file or image folder (YOLO labels beside it: ground truth)")
    to_bag.add_argument("output", type=Path, help="the bag folder to create")
    to_bag.add_argument("--synthetic-frames", type=int, default=0, help="no source: this many synthetic scene frames")
    to_bag.add_argument("--seed", type=int, default=0, help="synthetic scenes: the seed")
    to_bag.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    to_bag.add_argument("--compressed", action="store_true", help="sensor_msgs/CompressedImage (jpeg) instead of raw bgr8")
    to_bag.add_argument("--fps", type=float, default=0.0, help="frame rate (0: the video's; 10 for folders)")
    to_bag.add_argument("--max-frames", type=int, default=0)
    to_bag.add_argument("--topic", default="/camera/image_raw", help="image topic (camera_info and ground_truth beside it)")
    to_bag.add_argument("--frame-id", default="camera")
    to_bag.add_argument("--class-names", default="", help="comma-separated, for a labelled folder (default: COCO)")
    to_bag.add_argument("--no-ground-truth", action="store_true")
    to_bag.add_argument("--overwrite", action="store_true")
    to_bag.add_argument("--no-progress", action="store_true")
    to_bag.set_defaults(handler=cmd_video_to_bag)

    eval_bag = commands.add_parser("eval-bag", help="evaluate models side by side on a bag's camera topic")
    eval_bag.add_argument("bag", type=Path)
    eval_bag.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                          help="a model to evaluate (repeatable; the first is the speed-up reference)")
    eval_bag.add_argument("--mode", default="offline", choices=["offline", "live"])
    eval_bag.add_argument("--truth", default="topic", choices=["topic", "coco", "teacher"],
                          help="ground truth: a Detection2DArray topic, a COCO json, or a teacher (fidelity)")
    eval_bag.add_argument("--truth-topic", default=None)
    eval_bag.add_argument("--coco-json", default=None)
    eval_bag.add_argument("--teacher", default=None, help="teacher model for --truth teacher")
    eval_bag.add_argument("--topic", default=None, help="image topic (default: the bag's only one)")
    eval_bag.add_argument("--budget-ms", type=float, default=50.0)
    eval_bag.add_argument("--rate", type=float, default=1.0, help="live: playback rate (x recorded; 0: as fast as "
                          "the node keeps up)")
    eval_bag.add_argument("--max-frames", type=int, default=0)
    eval_bag.add_argument("--backend", default="auto")
    eval_bag.add_argument("--device", default="cpu")
    eval_bag.add_argument("--output", type=Path, default=Path("runs/eval_bag"))
    eval_bag.add_argument("--output-bag", action="store_true",
                          help="offline: also write an MCAP bag with the images, ground truth and every model's detections")
    eval_bag.add_argument("--no-progress", action="store_true")
    eval_bag.set_defaults(handler=cmd_eval_bag)

    detect = commands.add_parser("detect", help="detect objects in images, print JSON lines")
    detect.add_argument("--model", type=Path, required=True)
    detect.add_argument("--backend", default="auto")
    detect.add_argument("--device", default="auto")
    detect.add_argument("--score-threshold", type=float, default=0.3)
    detect.add_argument("--nms-threshold", type=float, default=0.45)
    detect.add_argument("images", type=Path, nargs="+")
    detect.set_defaults(handler=cmd_detect)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.handler(args)
    except PrunePerceptionError as exc:
        print(f"prune-perception {args.command}: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
