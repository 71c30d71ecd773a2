"""The image builds' shared .deb cache, safe for builds running at once on one machine.

A build never reads or writes the cache in place: it starts from a snapshot (hard links, instant) and
hands its new .debs back by copying each to a temporary name inside the cache and renaming it, which is
atomic. A file in the cache is therefore never half-written, and once a build has its snapshot, another
build publishing the same name replaces the cache's entry, not the file the first build links to."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path


def snapshot(cache: Path, into: Path) -> int:
    """Hard-link every .deb of the cache into `into` (a fresh folder on the same file system); returns
    how many. Only complete files end in .deb (see publish)."""
    cache.mkdir(parents=True, exist_ok=True)
    into.mkdir(parents=True, exist_ok=True)
    count = 0
    for deb in cache.glob("*.deb"):
        try:
            os.link(deb, into / deb.name)
        except FileExistsError:
            continue
        except FileNotFoundError:       # replaced or pruned by another build just now: the next build has it
            continue
        except OSError as exc:          # another file system: a copy, as complete as the cache's file
            if exc.errno != errno.EXDEV:
                raise
            shutil.copyfile(deb, into / deb.name)
        count += 1
    return count


def publish(new: Path, cache: Path) -> int:
    """Add the .debs in `new` (what one build downloaded) to the cache; returns how many were added.
    Each is written under a temporary name in the cache folder, flushed, then renamed over its final name."""
    cache.mkdir(parents=True, exist_ok=True)
    added = 0
    for deb in sorted(new.glob("*.deb")):
        target = cache / deb.name
        try:
            if target.stat().st_size == deb.stat().st_size:
                continue                # .deb names carry name, version and architecture: same file
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{deb.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, deb.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        added += 1
    return added
