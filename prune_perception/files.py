"""File helpers: content hashes and atomic writes (no half-written outputs on failure)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from prune_perception.errors import OutputWriteError, PrunePerceptionError

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NEARLY_FULL_BYTES = 1 << 20
"""A write that failed for any reason where less than this is free counts as disk full: torch
and onnx report a full disk as a RuntimeError of their own, not as ENOSPC."""


def file_sha256(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` on success.

    If the body raises, the temporary file is removed and ``path`` is left untouched.

    Example:
        >>> with atomic_output("report.json") as tmp:
        ...     tmp.write_text("{}")
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise output_write_error(target, exc) or exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, target)
    except Exception as exc:
        error = output_write_error(target, exc)
        if error is None:
            raise
        raise error from exc
    finally:
        tmp.unlink(missing_ok=True)


def output_write_error(target: Path, exc: BaseException) -> OutputWriteError | None:
    """A clear error for a failed write of ``target`` when the cause was the disk (full, or no
    permission); None for any other failure, which the caller re-raises as it is."""
    if isinstance(exc, PrunePerceptionError):
        return None
    previous = "the earlier file is unchanged" if target.exists() else "nothing was written"
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS or _nearly_full(target.parent):
        return OutputWriteError(f"no space left on the device while writing {target}; {previous}")
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputWriteError(f"cannot write {target}: {exc.strerror}; {previous}")
    return None


def _nearly_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL_BYTES


@contextlib.contextmanager
def atomic_stream(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """:func:`atomic_output` opened for binary writing, for writers that take a file object.
    ``torch.save`` given a path names its archive after the file, so saving to the temporary name
    would put random bytes in the file: saved through a stream, the same state gives the same bytes."""
    with atomic_output(path) as tmp, open(tmp, "wb") as stream:
        yield stream


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that :func:`atomic_output` leaves behind when its process is
    killed (``.<name>.<random>.tmp``) anywhere under ``folder``; return what was deleted. Only
    for a folder no other process is writing into."""
    root = Path(folder)
    stale = [path for path in root.rglob(".*.tmp") if path.is_file()] if root.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
