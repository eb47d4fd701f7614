"""Run the atheris fuzz harnesses in fuzz/, each in its own process, and print how many inputs
each ran. A crash (any exception that is not the project's own error), a hang (-timeout) or a
memory blow-up (-rss_limit_mb) fails the run; libFuzzer saves the input under
<output>/<harness>/crash-*, which belongs in fuzz/regressions/<harness>/ once fixed.

    python scripts/fuzz.py --seconds 600            # the longer run: 10 minutes per harness
    python scripts/fuzz.py --runs 2000 --seed 1     # a bounded, repeatable smoke run (what CI does)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"
HARNESSES = ("image_conversion", "sidecar", "compress_config", "bag_reader")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def run_harness(name: str, output: Path, runs: int, seconds: int, timeout_s: int, rss_limit_mb: int,
                seed: int = 0) -> dict:
    folder = output / name
    corpus = folder / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    limit = f"-runs={runs}" if runs else f"-max_total_time={seconds}"
    command = [sys.executable, str(FUZZ / f"fuzz_{name}.py"), limit, f"-timeout={timeout_s}",
               f"-rss_limit_mb={rss_limit_mb}", f"-artifact_prefix={folder}/", "-print_final_stats=1", f"-seed={seed}",
               str(corpus)]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - started
    (folder / "fuzz.log").write_text(result.stdout + result.stderr)
    done = _DONE.search(result.stderr)
    crashes = sorted(str(p) for p in folder.glob("crash-*")) + sorted(str(p) for p in folder.glob("timeout-*")) + \
        sorted(str(p) for p in folder.glob("oom-*"))
    return {"harness": name, "runs": int(done.group(1)) if done else None, "seconds": round(wall, 1),
            "exit_code": result.returncode, "findings": crashes, "corpus_inputs": len(list(corpus.iterdir())),
            "log": str(folder / "fuzz.log"), "tail": "" if result.returncode == 0 else result.stderr[-4000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600, help="fuzzing time per harness")
    parser.add_argument("--runs", type=int, default=0, help="inputs per harness instead of a time (0: use --seconds)")
    parser.add_argument("--harness", default=",".join(HARNESSES), help=f"comma-separated, of {', '.join(HARNESSES)}")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a hang")
    parser.add_argument("--rss-limit-mb", type=int, default=3072)
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer's random seed (0: a new one each run)")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "fuzz")
    args = parser.parse_args()
    names = [name.strip() for name in args.harness.split(",") if name.strip()]
    unknown = sorted(set(names) - set(HARNESSES))
    if unknown:
        print(f"unknown harness(es) {unknown}; choose from {list(HARNESSES)}", file=sys.stderr)
        return 2
    results = []
    print(f"{'harness':<18} {'inputs run':>10} {'seconds':>8} {'inputs/s':>9} {'corpus':>7}  outcome")
    for name in names:
        result = run_harness(name, args.output, args.runs, args.seconds, args.timeout, args.rss_limit_mb, args.seed)
        results.append(result)
        rate = f"{result['runs'] / max(result['seconds'], 1e-9):9.0f}" if result["runs"] else f"{'?':>9}"
        outcome = "ok" if result["exit_code"] == 0 else f"FAILED (exit {result['exit_code']}): {result['findings']}"
        print(f"{name:<18} {result['runs'] or '?':>10} {result['seconds']:8.1f} {rate} {result['corpus_inputs']:7d}  {outcome}",
              flush=True)
        if result["tail"]:
            print(result["tail"], file=sys.stderr)
    (args.output / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
