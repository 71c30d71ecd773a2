"""Finished builds kept in the cache under their inputs' digest (the tests' images, the operator
archives). Every change of the inputs makes a new folder (an image build is over 1 GB), so each use marks
its folder and folders nobody used for a week are removed: a developer's cache stays bounded, and a build
another process is using right now (marked at its start) is never touched."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

#: The file a finished build leaves in its folder; its mtime is the folder's last use.
COMPLETE = "complete"
KEEP_UNUSED_DAYS = 7.0


def mark_used(folder: Path) -> None:
    """Marks a finished build as complete and used now."""
    (folder / COMPLETE).touch()


def evict_unused(parent: Path, days: float = KEEP_UNUSED_DAYS, now: float | None = None) -> list[Path]:
    """Removes the build folders under `parent` unused for `days` (an unfinished one counts from its last
    change: a build that crashed); returns them."""
    cutoff = (time.time() if now is None else now) - days * 86400
    removed = []
    for folder in sorted(parent.iterdir()) if parent.is_dir() else []:
        if not folder.is_dir():
            continue
        try:
            last = (folder / COMPLETE).stat().st_mtime
        except FileNotFoundError:
            last = folder.stat().st_mtime
        if last < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
