"""The cache of finished builds: keyed by everything that goes into them, and bounded (folders unused for
a week go, used ones stay)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from maculaos.image import airgap
from maculaos.image.build import BuildInputs
from maculaos.image.cacheuse import COMPLETE, evict_unused, mark_used
from maculaos.image.definition import load_definition
from maculaos.image.signing import SigningIdentity

REPO = Path(__file__).resolve().parents[2]

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


@pytest.mark.parametrize("changed", ["README.md", "pyproject.toml"])
def test_what_the_operator_wheel_is_built_from_keys_both_caches(tmp_path: Path, changed: str) -> None:
    """The operator archive's wheel carries pyproject's metadata and the README: a change of either must
    not reuse an archive, or a test image, built before it."""
    repo = tmp_path / "repo"
    for tree in ("operator/maculaos", "image-build", "charts"):
        shutil.copytree(REPO / tree, repo / tree, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("README.md", "pyproject.toml", "tools/constraints.txt"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, repo / name)
    keyring = tmp_path / "keyring.pem"
    keyring.write_text("a keyring")
    inputs = BuildInputs(load_definition(repo / "image-build" / "maculaos.yaml"), repo,
                         SigningIdentity(tmp_path / "k", keyring, keyring, True))
    before = inputs.digest(), airgap.operator_inputs_digest(repo, 1_700_000_000)
    with (repo / changed).open("a") as f:
        f.write("\n")
    after = inputs.digest(), airgap.operator_inputs_digest(repo, 1_700_000_000)
    assert before[0] != after[0] and before[1] != after[1]
