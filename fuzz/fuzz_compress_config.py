"""Fuzz harness: the compress YAML config loader and its ``--set section.key=value`` overrides.
Mutated from the shipped configurations."""

from __future__ import annotations

import tempfile
from pathlib import Path

import atheris
import yaml  # noqa: F401  imported before instrumentation: only this project's code is instrumented

with atheris.instrument_imports(include=["prune_perception"]):
    from prune_perception.compress.config import load_compress_config
    from prune_perception.errors import PrunePerceptionError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path(tempfile.mkdtemp(prefix="fuzz_config_")) / "compress.yaml"


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    overrides = [fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80)) for _ in range(fdp.ConsumeIntInRange(0, 2))]
    CONFIG.write_bytes(fdp.ConsumeBytes(fdp.remaining_bytes()))
    try:
        load_compress_config(CONFIG, overrides)
    except PrunePerceptionError:
        pass


def seeds() -> list[bytes]:
    return [b"\x00" + path.read_bytes() for path in sorted((ROOT / "config").glob("compress*.yaml"))]


if __name__ == "__main__":
    from common import fuzz_main

    fuzz_main(test_one_input, seeds)
