"""A backup never backs up itself or the kernel's views (host/backup_guard.py), with the real restic: a local
repository inside the included paths is left out and the message says so; a backup of `/` stays on one
filesystem (a tmpfs mounted under the host root is not walked) and leaves out /proc, /sys, /dev, /run, /tmp."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from maculaos.api.backup import Retention
from maculaos.devenv.controlplane import default_bin_dir
from maculaos.host.backup import BackupJob, JobReport, run_job
from maculaos.host.backup_guard import PSEUDO_PATHS, guard
from maculaos.host.restic import Restic, local_repository, rest_repository

RESTIC = str(default_bin_dir() / "restic")
NODE = "macula-nuc-01"


def job(host: Path, include: list[str], repo: str, exclude: list[str] | None = None) -> BackupJob:
    return BackupJob(name="nightly", node=NODE, host_root=host, include=include, exclude=exclude or [],
                     retention=Retention(), repositories=[local_repository(host / repo.lstrip("/"), "pw")],
                     target_type="local", restic=RESTIC)


def snapshot_paths(host: Path, repo: str) -> set[str]:
    """Every path in the latest snapshot, relative to the host root."""
    restic = Restic(local_repository(host / repo.lstrip("/"), "pw"), RESTIC)
    out = restic.run("ls", "latest", "--json", "--no-lock").stdout
    nodes = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {str(Path(n["path"]).relative_to(host.resolve())) for n in nodes
            if n.get("struct_type") == "node" and Path(n["path"]).is_relative_to(host.resolve())}


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    for path, text in {"etc/hostname": NODE, "var/lib/data/a.txt": "a", "proc/1/status": "kernel",
                       "sys/kernel/x": "kernel", "dev/null-ish": "", "run/lock/x": "", "tmp/scratch": "x"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def run(j: BackupJob) -> JobReport:
    report = run_job(j)
    assert report.ok, report.message
    return report


def test_a_repository_inside_the_included_path_is_left_out_and_said(host: Path) -> None:
    first = run(job(host, ["/var"], "/var/backups/r"))
    assert "repository /var/backups/r lies inside the backed-up path /var: left out of the backup" in first.message
    paths = snapshot_paths(host, "/var/backups/r")
    assert "var/lib/data/a.txt" in paths
    assert not [p for p in paths if p.startswith("var/backups/r")], "the repository is not in its own snapshot"
    second = run(job(host, ["/var"], "/var/backups/r"))
    assert second.files_new == 0 and second.bytes_added < 10_000, "the next run does not copy the repository"


def test_a_repository_outside_the_included_paths_is_not_mentioned(host: Path) -> None:
    report = run(job(host, ["/var/lib/data"], "/srv/backups"))
    assert "lies inside" not in report.message


@contextlib.contextmanager
def usb_stick(host: Path) -> Iterator[None]:
    """Another filesystem under the host root (a tmpfs at /media/usb holding photo.jpg) while the block runs."""
    usb = host / "media/usb"
    usb.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(usb)], check=True)
    try:
        (usb / "photo.jpg").write_text("another filesystem")
        yield
    finally:
        subprocess.run(["umount", str(usb)], check=False)


def test_a_backup_of_root_stays_on_one_filesystem_without_pseudo_filesystems(host: Path) -> None:
    with usb_stick(host):
        report = run(job(host, ["/"], "/var/backups/r"))
        paths = snapshot_paths(host, "/var/backups/r")
    assert {"etc/hostname", "var/lib/data/a.txt"} <= paths
    assert "media/usb/photo.jpg" not in paths, "another mount is not walked"
    for pseudo in PSEUDO_PATHS:
        assert not [p for p in paths if p == pseudo[1:] or p.startswith(pseudo[1:] + "/")], (pseudo, paths)
    assert not [p for p in paths if p.startswith("var/backups/r")]
    assert "/ backed up on one filesystem, without /proc, /sys, /dev, /run, /tmp" in report.message


def test_another_mount_named_in_include_is_backed_up(host: Path) -> None:
    with usb_stick(host):
        run(job(host, ["/", "/media/usb"], "/var/backups/r"))
        paths = snapshot_paths(host, "/var/backups/r")
    assert "media/usb/photo.jpg" in paths and "etc/hostname" in paths


def test_guard_decisions(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    inside = [local_repository(host / "var/backups/r", "pw")]
    assert guard(host, ["/var/lib"], inside).exclude == []
    assert guard(host, ["/var/backups/r"], inside).exclude == ["/var/backups/r"], "the repository itself"
    assert guard(host, ["/var"], [rest_repository("rest:http://10.0.0.2:8000/", "pw")]).exclude == []
    whole = guard(host, ["/"], inside)
    assert whole.one_file_system and whole.exclude == ["/var/backups/r", *PSEUDO_PATHS]
    assert not guard(host, ["/etc", "/var"], inside).one_file_system
