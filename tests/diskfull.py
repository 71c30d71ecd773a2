"""A size-limited tmpfs mounted where a node writes, and a way to fill it: the disk-full faults of the host
tests (we run as root; tmpfs pages cost memory only once written)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def small_tmpfs(where: Path, size: int) -> Iterator[Path]:
    """where, made a tmpfs of size bytes (rounded up to pages) for the block and holding a copy of what it
    held; at the end the tmpfs goes and the directory as it was shows again."""
    where.mkdir(parents=True, exist_ok=True)
    saved = where.with_name(where.name + ".before-tmpfs")
    shutil.copytree(where, saved, symlinks=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        shutil.copytree(saved, where, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(saved)
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False)
        shutil.rmtree(saved, ignore_errors=True)


def fill(where: Path, leave: int = 0) -> Path:
    """A file taking all but `leave` bytes of where's free space; delete it to give the space back."""
    filler = where / ".filler"
    free = shutil.disk_usage(where).free - leave
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(free, 1))
    return filler


def resize(where: Path, size: int) -> None:
    """Give the tmpfs at where more (or less) room in place, as a grown partition would."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)
