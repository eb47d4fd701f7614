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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune-perception", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

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
