"""Paths a resource names, found under the host root and never outside it.

The agent sees the node's filesystem under a host root (``/host`` in its container, ``/`` on the node
itself). A path such as ``/var/lib/data`` joined to it naively is opened by the kernel, which follows
every symlink on the way from the agent's own ``/``: a link ``/var/lib/data -> /etc`` on the node would
lead the agent to its container's ``/etc``, and ``-> ../../../..`` out of the host root altogether.
``in_host_root`` resolves the path the way the node itself would, with the host root as ``/`` (as
openat2's RESOLVE_IN_ROOT does): an absolute link target starts again at the host root, and ``..`` stops
there. Every host module joins a user's path to the host root through it.

What it cannot close is a race: a link swapped in between the resolution and the open. The agent is the
only writer of what it resolves, and the paths are checked at the door (api/common.py, HostPath), so this
is a bound on mistakes and planted links, not on a process racing the agent on the node.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from maculaos.errors import MaculaosError

#: As the kernel's limit on links followed in one lookup (MAXSYMLINKS).
MAX_LINKS = 40


class HostPathError(MaculaosError, ValueError):
    """A path that cannot be resolved inside the host root (a NUL, a loop of links)."""


def in_host_root(host_root: Path, path: str, follow_last: bool = True) -> Path:
    """``path`` (as the node names it) under host_root, every symlink on the way resolved inside it.

    With follow_last=False the last component is kept as it is even when it is a link (what restic backs
    up or a restore replaces is the link itself). Components that do not exist are taken as they are.
    """
    if "\x00" in path:
        raise HostPathError(f"{path!r} holds a NUL character")
    pending = [p for p in reversed(path.split("/")) if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = host_root.joinpath(*resolved, part)
        if not pending and not follow_last:
            resolved.append(part)
            continue
        try:
            mode = os.lstat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_LINKS:
            raise HostPathError(f"{path}: more than {MAX_LINKS} symbolic links on the way (a loop?)")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending += [p for p in reversed(target.split("/")) if p not in ("", ".")]
    return host_root.joinpath(*resolved)
