"""Keep a backup from backing up itself or the kernel's views: what a run adds to its excludes, and why.

- A local repository inside an include path would be read into its own snapshot, which then grows by the
  whole repository on every run. It is excluded automatically, and the run's message says so (refusing
  would fail a Backup of `/` to a local disk, the very case people mean).
- Backing up `/` stays on one filesystem (restic --one-file-system: other mounts, such as a USB disk or a
  network share, are not walked unless named in include) and leaves out the pseudo-filesystems and
  scratch directories, whose contents are the kernel's or vanish at reboot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from maculaos.host.paths import in_host_root
from maculaos.host.restic import Repository

#: Left out of a backup of `/`: kernel views (proc, sys, dev) and what does not survive a reboot (run, tmp).
PSEUDO_PATHS = ("/proc", "/sys", "/dev", "/run", "/tmp")


@dataclass(frozen=True)
class Guarded:
    """The excludes a run adds, whether it stays on one filesystem, and the notes its message carries."""

    exclude: list[str] = field(default_factory=list)
    one_file_system: bool = False
    notes: list[str] = field(default_factory=list)


def guard(host_root: Path, include: Sequence[str], repositories: Sequence[Repository]) -> Guarded:
    """What to add to a run over include (node paths) writing to repositories."""
    exclude: list[str] = []
    notes: list[str] = []
    for repo in repositories:
        inside = _repository_inside(host_root, include, repo)
        if inside is not None:
            node_path, covering = inside
            exclude.append(node_path)
            notes.append(f"repository {node_path} lies inside the backed-up path {covering}: left out of the backup")
    whole = "/" in include
    if whole:
        exclude += [p for p in PSEUDO_PATHS if p not in exclude]
        notes.append(f"/ backed up on one filesystem, without {', '.join(PSEUDO_PATHS)}")
    return Guarded(exclude=exclude, one_file_system=whole, notes=notes)


def _repository_inside(host_root: Path, include: Sequence[str], repo: Repository) -> tuple[str, str] | None:
    """(the repository's node path, the include path covering it) for a local repository inside one."""
    if ":" in repo.location.split("/", 1)[0]:  # rest:, s3:, sftp: ... are not on this node's disk
        return None
    root = host_root.resolve()
    location = Path(repo.location).resolve()
    if not location.is_relative_to(root):
        return None
    relative = location.relative_to(root).as_posix()
    node_path = "/" if relative == "." else f"/{relative}"
    for path in include:
        where = in_host_root(host_root, path).resolve()
        if location.is_relative_to(where):
            return node_path, path
    return None
