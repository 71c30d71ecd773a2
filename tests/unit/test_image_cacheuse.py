"""The cache of finished builds stays bounded: folders unused for a week go, used ones stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from maculaos.image.cacheuse import COMPLETE, evict_unused, mark_used

DAY = 86400.0


def build_folder(parent: Path, name: str, age_days: float, complete: bool = True) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "image.squashfs").write_bytes(b"x")
    then = time.time() - age_days * DAY
    if complete:
        (folder / COMPLETE).touch()
        os.utime(folder / COMPLETE, (then, then))
    os.utime(folder, (then, then))
    return folder


def test_builds_unused_for_a_week_are_removed_and_recent_ones_kept(tmp_path: Path) -> None:
    old = build_folder(tmp_path, "old", age_days=8)
    crashed = build_folder(tmp_path, "crashed", age_days=9, complete=False)
    recent = build_folder(tmp_path, "recent", age_days=6)
    running = build_folder(tmp_path, "running", age_days=0, complete=False)
    assert evict_unused(tmp_path) == [crashed, old]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recent", "running"]
    assert (recent / "image.squashfs").exists() and running.exists()


def test_a_use_keeps_an_old_build(tmp_path: Path) -> None:
    """The mark is the last use, not the build time: a build reused every day is never evicted."""
    reused = build_folder(tmp_path, "reused", age_days=30)
    mark_used(reused)
    assert evict_unused(tmp_path) == [] and reused.exists()


def test_a_missing_cache_folder_is_nothing_to_evict(tmp_path: Path) -> None:
    assert evict_unused(tmp_path / "none") == []
