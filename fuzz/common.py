"""What the fuzz harnesses share: the rule for an acceptable outcome, seeding a corpus, and the
libFuzzer entry point.

The only acceptable outcome for any input is a result or one of the project's own errors
(:class:`~prune_perception.errors.PrunePerceptionError`): any other exception is a crash that
atheris reports (with the input saved as ``crash-<sha1>``), and libFuzzer's ``-timeout`` turns a
hang into one too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable


def seed_corpus(folder: Path, seeds: Iterable[bytes]) -> None:
    """Write the seeds into an empty corpus folder (a folder that has inputs is left alone)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.iterdir()):
        for index, seed in enumerate(seeds):
            (folder / f"seed_{index}").write_bytes(seed)


def fuzz_main(test_one_input: Callable[[bytes], None], seeds: Callable[[], Iterable[bytes]]) -> None:
    """``python fuzz_x.py [libFuzzer flags] [corpus folder ...]``: the first corpus folder is
    seeded when empty, then atheris runs ``test_one_input``."""
    import atheris

    folders = [Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")]
    if folders:
        seed_corpus(folders[0], seeds())
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
