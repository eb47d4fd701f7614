"""Type-check the TensorRT backend against the installed ``tensorrt-stubs``.

The stubs (every 10.x release on PyPI) cannot be parsed by mypy as installed: some plugin
methods name a parameter ``in`` (a Python keyword), and some signatures put a parameter without a
default after defaulted ones. They also lack a ``py.typed`` marker. This copies the ``.pyi`` files
into a temporary stub folder with those two defects repaired, and runs mypy on the backend with
``MYPYPATH`` pointing there. Exit status is mypy's.

    python scripts/typecheck_tensorrt.py
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = [
    "prune_perception/runtime/backends/tensorrt_backend.py",
    "prune_perception/runtime/backends/cuda_memory.py",
    "prune_perception/export/tensorrt_engine.py",
]
KEYWORD_PARAMETER = re.compile(r"\b(in|out)\s*:")
SIGNATURE = re.compile(r"^(\s*def \w+\()(.*)(\)\s*->.*)$")


def _split_parameters(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += char in "[("
        depth -= char in "])"
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def repair_line(line: str) -> str:
    """Rename keyword parameters; give later parameters a default once one has a default."""
    line = KEYWORD_PARAMETER.sub(lambda m: f"{m.group(1)}_:", line)
    match = SIGNATURE.match(line)
    if not match:
        return line
    parameters, seen_default = [], False
    for parameter in _split_parameters(match.group(2)):
        if "=" in parameter:
            seen_default = True
        elif seen_default and parameter.strip() and not parameter.strip().startswith("*"):
            parameter += " = ..."
        parameters.append(parameter)
    return match.group(1) + ",".join(parameters) + match.group(3)


def main() -> int:
    try:
        distribution = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        print("tensorrt-stubs is not installed", file=sys.stderr)
        return 2
    stub_files = [f for f in distribution.files or [] if str(f).endswith(".pyi")]
    with tempfile.TemporaryDirectory() as folder:
        for stub in stub_files:
            text = Path(distribution.locate_file(stub)).read_text()
            target = Path(folder, stub)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(repair_line(line) for line in text.splitlines()) + "\n")
        env = {**os.environ, "MYPYPATH": folder}
        command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "mypy.ini"), *CHECKED]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    print(f"tensorrt-stubs {distribution.version}: " + result.stdout.strip(), result.stderr.strip(), sep="\n")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
