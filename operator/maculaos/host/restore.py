"""Restore host data from a restic snapshot without ever leaving it half-restored.

The snapshot is chosen strictly (an id that is not there is an error, never "the closest one"); every
requested path is first restored into a staging directory beside its destination (same filesystem, so the
swap is a rename); only when all of them restored does each swap happen, and a failed swap puts back the
ones already done. The previous data is deleted only after every swap succeeded.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from maculaos.api.backup import system_directory
from maculaos.host.paths import in_host_root
from maculaos.host.restic import ROOT_TAG, Restic, ResticError, ResticFailure, Snapshot

log = logging.getLogger("maculaos.restore")


@dataclass(frozen=True)
class SnapshotChoice:
    """Exactly one of: a snapshot id (or its prefix), the latest one, the newest one before a time."""

    snapshot_id: str | None = None
    latest: bool = False
    before: dt.datetime | None = None

    def describe(self) -> str:
        if self.snapshot_id:
            return f"snapshot {self.snapshot_id}"
        if self.before is not None:
            return f"the newest snapshot before {self.before.isoformat()}"
        return "the latest snapshot"


def choose_snapshot(snapshots: Sequence[Snapshot], choice: SnapshotChoice, where: str) -> Snapshot:
    """The snapshot asked for, or SnapshotNotFound: never another one in its place."""
    ordered = sorted(snapshots, key=lambda s: s.time)
    found: list[Snapshot]
    if choice.snapshot_id:
        found = [s for s in ordered if s.id.startswith(choice.snapshot_id)]
        if len(found) > 1:
            raise ResticError(ResticFailure.SNAPSHOT_NOT_FOUND, (
                f"snapshot id {choice.snapshot_id} is ambiguous in {where}: give more characters"))
    elif choice.before is not None:
        before = choice.before if choice.before.tzinfo else choice.before.replace(tzinfo=dt.timezone.utc)
        found = [s for s in ordered if s.time < before][-1:]
    else:
        found = ordered[-1:]
    if not found:
        held = f"{len(ordered)} snapshot(s)" + (f", newest {ordered[-1].short_id} at "
                                                 f"{ordered[-1].time.isoformat(timespec='seconds')}" if ordered else "")
        raise ResticError(ResticFailure.SNAPSHOT_NOT_FOUND, (
            f"{choice.describe()} does not exist in {where} ({held}); nothing restored"))
    return found[0]


def choose_in_repositories(restics: Sequence[Restic], node: str, backup_name: str,
                           choice: SnapshotChoice) -> tuple[Restic, Snapshot]:
    """The snapshot asked for among the repositories that answer (a mesh Backup keeps a copy on each of its
    peers, each with its own snapshot ids), and the repository holding it: the newest across them for
    latest and before (a peer that missed runs while it was down holds older ones), the one holding the
    id otherwise. A peer that is down or holds no repository yet is passed over; any other failure (a
    wrong password, damage) stops here rather than silently picking another copy."""
    found: list[tuple[Restic, Snapshot]] = []
    answered: list[str] = []
    away: list[str] = []
    for restic in restics:
        try:
            found += [(restic, s) for s in restic.snapshots(node, backup_name)]
            answered.append(restic.repo.display())
        except ResticError as exc:
            if exc.failure not in (ResticFailure.UNREACHABLE, ResticFailure.NO_REPOSITORY):
                raise
            away.append(str(exc))
    if len(away) == len(restics):
        raise ResticError(ResticFailure.UNREACHABLE, "no repository answered, nothing restored: " + "; ".join(away))
    where = f"{', '.join(answered)} (node {node}" + (f"; {len(away)} more not answering)" if away else ")")
    chosen = choose_snapshot([s for _, s in found], choice, where)
    return next(r for r, s in found if s is chosen), chosen


def logical_paths(snapshot: Snapshot) -> list[str]:
    """The node paths a snapshot holds, without the host root it was read under."""
    root = snapshot.tag_value(ROOT_TAG) or "/"
    relative = (str(PurePosixPath(p).relative_to(root)) for p in snapshot.paths)
    return ["/" if r == "." else f"/{r}" for r in relative]


def _within(path: str, parents: Sequence[str]) -> bool:
    return any(PurePosixPath(path).is_relative_to(p) for p in parents)


@dataclass(frozen=True)
class _Staged:
    path: str
    staged: Path
    destination: Path
    workdir: Path


def restore_snapshot(restic: Restic, snapshot: Snapshot, host_root: Path, paths: Sequence[str] = (),
                     target_dir: str | None = None) -> list[str]:
    """Restore paths (default: all the snapshot holds) to their original places under host_root, or under
    target_dir; returns the node paths restored. On any failure nothing at the destinations changed."""
    held = logical_paths(snapshot)
    wanted = list(paths) or held
    outside = [p for p in wanted if not _within(p, held)]
    if outside:
        raise ResticError(ResticFailure.SNAPSHOT_NOT_FOUND, (
            f"{', '.join(outside)} is not in snapshot {snapshot.short_id} (it holds {', '.join(held)}); "
            "nothing restored"))
    snap_root = Path(snapshot.tag_value(ROOT_TAG) or "/")
    token = uuid.uuid4().hex[:8]
    staged: list[_Staged] = []
    started = time.monotonic()
    try:
        for path in wanted:
            staged.append(_stage(restic, snapshot, snap_root, host_root, path, target_dir, token))
        restored = time.monotonic()
        _swap_all(staged, token)
    finally:
        for item in staged:
            shutil.rmtree(item.workdir, ignore_errors=True)
    log.info(f"restored {', '.join(wanted)} from {snapshot.short_id}: restic {restored - started:.1f}s, "
             f"swap and clean-up {time.monotonic() - restored:.1f}s")
    return wanted


def _destination(host_root: Path, path: str, target_dir: str | None) -> Path:
    """Where path lands: under host_root (and target_dir), symlinks on the way resolved inside host_root
    so that a planted link never carries a restore outside it; a link in the last place is replaced."""
    logical = f"{target_dir.rstrip('/')}/{path.lstrip('/')}" if target_dir else path
    return in_host_root(host_root, logical, follow_last=False)


def system_landings(host_root: Path, paths: Sequence[str], target_dir: str | None) -> list[tuple[str, str]]:
    """(path, where it would land) for every path whose destination, with the node's symlinks on the way
    resolved, lies in a system directory although its name does not say so: /var/lib/restored a link to
    /etc. The API's rule (api/backup.restore_refusals) reads names only; this is the same rule on the node,
    for the agent to apply before it writes anything."""
    found = []
    for path in paths:
        landing = "/" + _destination(host_root, path, target_dir).relative_to(host_root).as_posix().lstrip("/")
        if system_directory(landing) is not None:
            found.append((path, landing.rstrip("/") or "/"))
    return found


def _stage(restic: Restic, snapshot: Snapshot, snap_root: Path, host_root: Path, path: str,
           target_dir: str | None, token: str) -> _Staged:
    destination = _destination(host_root, path, target_dir)
    destination.parent.mkdir(parents=True, exist_ok=True)
    workdir = destination.parent / f".{destination.name}.maculaos-restore-{token}"
    workdir.mkdir()
    inside = snap_root / path.lstrip("/")
    try:
        restic.restore(snapshot.id, workdir, [str(inside)])
    except ResticError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ResticError(exc.failure, f"restore of {path} from snapshot {snapshot.short_id} failed, "
                                       f"nothing changed: {exc}") from exc
    staged = workdir / str(inside).lstrip("/")
    if not staged.exists() and not staged.is_symlink():
        shutil.rmtree(workdir, ignore_errors=True)
        raise ResticError(ResticFailure.SNAPSHOT_NOT_FOUND, (
            f"{path} is not in snapshot {snapshot.short_id}; nothing restored"))
    return _Staged(path, staged, destination, workdir)


def _swap_all(staged: Sequence[_Staged], token: str) -> None:
    """Rename each staged copy into place, keeping the old one aside until all are in."""
    done: list[tuple[_Staged, Path | None]] = []
    try:
        for item in staged:
            old: Path | None = None
            if item.destination.exists() or item.destination.is_symlink():
                old = item.destination.with_name(f".{item.destination.name}.maculaos-old-{token}")
                os.rename(item.destination, old)
            try:
                os.rename(item.staged, item.destination)
            except OSError:
                if old is not None:
                    os.rename(old, item.destination)
                raise
            done.append((item, old))
    except OSError as exc:
        for item, old in reversed(done):
            os.rename(item.destination, item.staged)
            if old is not None:
                os.rename(old, item.destination)
        raise ResticError(ResticFailure.FAILED, f"could not swap restored data into place, old data kept: {exc}") \
            from exc
    for _, old in done:
        if old is None:
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
