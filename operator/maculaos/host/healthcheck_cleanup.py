"""Disk clean-up (seed 4.17.4): vacuum the journal, prune unused container images, remove old rotated
logs. Each step reports what it did, or why it did nothing; none raises."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from maculaos.api.common import parse_duration
from maculaos.api.healthcheck import Cleanup

ROTATED_LOG = re.compile(r".*(\.[0-9]+|\.gz|\.xz|\.zst|\.old)$")


def vacuum_journal(host_root: Path, max_size: str, journalctl: str = "journalctl") -> str:
    journal = host_root / "var/log/journal"
    if not journal.is_dir():
        return "journal: no persistent journal on this node"
    result = subprocess.run([journalctl, f"--directory={journal}", f"--vacuum-size={max_size}"],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        return f"journal: vacuum failed: {result.stderr.strip()[:200]}"
    freed = re.search(r"freed ([0-9.]+[KMGB]?)", result.stderr + result.stdout)
    return f"journal: vacuumed to {max_size}" + (f", freed {freed.group(1)}" if freed else "")


def prune_images(crictl: str = "crictl") -> str:
    if shutil.which(crictl) is None:
        return "images: crictl not available here, skipped"
    result = subprocess.run([crictl, "rmi", "--prune"], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        return f"images: prune failed: {result.stderr.strip()[:200]}"
    removed = len([line for line in result.stdout.splitlines() if line.startswith("Deleted")])
    return f"images: pruned {removed} unused image(s)"


def remove_old_logs(host_root: Path, older_than: str) -> str:
    cutoff = time.time() - parse_duration(older_than).total_seconds()
    removed, freed = 0, 0
    logs = host_root / "var/log"
    for path in logs.rglob("*") if logs.is_dir() else []:
        if path.is_file() and not path.is_symlink() and ROTATED_LOG.match(path.name) and path.stat().st_mtime < cutoff:
            freed += path.stat().st_size
            path.unlink()
            removed += 1
    return f"logs: removed {removed} rotated log(s) older than {older_than}, freed {freed // 1024} KiB"


def run_cleanup(host_root: Path, cleanup: Cleanup) -> list[str]:
    """Every configured step, in order; the list is what the status reports."""
    steps = [vacuum_journal(host_root, cleanup.journal_max_size)]
    if cleanup.prune_images:
        steps.append(prune_images())
    if cleanup.remove_logs_older_than:
        steps.append(remove_old_logs(host_root, cleanup.remove_logs_older_than))
    return steps
