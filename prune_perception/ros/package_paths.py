"""Where the package's launch and config files are: the ament share folder, or the source tree."""

from __future__ import annotations

from pathlib import Path

from prune_perception.errors import PrunePerceptionError

PACKAGE = "prune_perception"
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def share_path(*parts: str) -> Path:
    """``share/prune_perception/<parts>`` of a colcon install, else ``<source root>/<parts>``."""
    candidates = []
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            candidates.append(Path(get_package_share_directory(PACKAGE), *parts))
        except (PackageNotFoundError, OSError):  # not installed with colcon / no AMENT_PREFIX_PATH
            pass
    except ImportError:
        pass
    candidates.append(SOURCE_ROOT.joinpath(*parts))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise PrunePerceptionError(f"cannot find {'/'.join(parts)} (looked in {[str(c) for c in candidates]})")


def config_path(name: str) -> Path:
    return share_path("config", name)
