"""Paths a resource names stay inside the host root (issue #18): a symlink planted in a sandbox host root
that points outside it is resolved inside the root, by every host module that reads or writes a user's
path: health probes, restic backups (include), restores (paths and targetPath). A Backup's local repository
(test_backup_engine) and a NodeUpgrade's source.localPath (test_upgrade) have theirs beside their agents'
other tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from maculaos.api.healthcheck import DiskProbe, ProcessProbe
from maculaos.devenv.controlplane import default_bin_dir
from maculaos.host.healthcheck import probe_disk, probe_process
from maculaos.host.paths import MAX_LINKS, HostPathError, in_host_root
from maculaos.host.restic import Restic, local_repository
from maculaos.host.restore import SnapshotChoice, choose_snapshot, restore_snapshot

NODE = "macula-nuc-01"
RESTIC = str(default_bin_dir() / "restic")
SECRET = "outside the host root\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the host root that nothing may read or write through it."""
    where = tmp_path / "outside"
    where.mkdir()
    (where / "secret").write_text(SECRET)
    (where / "pid").write_text(f"{os.getpid()}\n")
    return where


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    (root / "var/lib/data").mkdir(parents=True)
    (root / "var/lib/data/orders.csv").write_text("id\n1\n")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("inside\n")
    return root


def test_absolute_links_start_again_at_the_host_root(host: Path, outside: Path) -> None:
    (host / "var/lib/planted").symlink_to(outside)
    (host / "var/lib/etc-link").symlink_to("/etc")
    assert in_host_root(host, "/var/lib/planted/secret") == host / str(outside).lstrip("/") / "secret"
    assert in_host_root(host, "/var/lib/etc-link/hostname").read_text() == "inside\n"


def test_relative_links_stop_at_the_host_root(host: Path, outside: Path) -> None:
    (host / "var/lib/up").symlink_to("../../../../../../../../" + str(outside).lstrip("/"))
    resolved = in_host_root(host, "/var/lib/up/secret")
    assert resolved.is_relative_to(host) and not resolved.exists()
    (host / "var/lib/sibling").symlink_to("data")
    assert in_host_root(host, "/var/lib/sibling/orders.csv") == host / "var/lib/data/orders.csv"


def test_the_last_link_is_kept_when_asked_and_loops_and_nul_are_refused(host: Path, outside: Path) -> None:
    (host / "var/lib/planted").symlink_to(outside)
    assert in_host_root(host, "/var/lib/planted", follow_last=False) == host / "var/lib/planted"
    (host / "var/lib/loop").symlink_to("loop")
    with pytest.raises(HostPathError, match=f"more than {MAX_LINKS}"):
        in_host_root(host, "/var/lib/loop/x")
    with pytest.raises(HostPathError, match="NUL"):
        in_host_root(host, "/var/lib/\x00")


def test_probes_never_read_through_a_link_out_of_the_root(host: Path, outside: Path) -> None:
    (host / "run").symlink_to(outside)
    ok, output = probe_process(ProcessProbe(pid_file="/run/pid"), host)
    assert not ok and "cannot read a pid" in output
    (host / "var/lib/data/app.pid").write_text(f"{os.getpid()}\n")
    assert probe_process(ProcessProbe(pid_file="/var/lib/data/app.pid"), host)[0]
    (host / "mnt").symlink_to(outside)
    ok, output = probe_disk(DiskProbe(path="/mnt/secret"), host)
    assert not ok and "cannot stat /mnt/secret" in output


@pytest.fixture
def restic(tmp_path: Path) -> Restic:
    restic = Restic(local_repository(tmp_path / "repo", "correct horse"), RESTIC, hostname=os.uname().nodename)
    restic.ensure_initialized()
    return restic


def _snapshot_files(restic: Restic) -> list[str]:
    snap = choose_snapshot(restic.snapshots(NODE), SnapshotChoice(latest=True), "the repository")
    listing = restic.run("ls", "--json", snap.id).stdout
    return [line for line in listing.splitlines() if '"path"' in line]


def test_a_backup_never_reads_through_a_link_out_of_the_root(restic: Restic, host: Path, outside: Path) -> None:
    (host / "var/lib/planted").symlink_to(outside)  # include names it: backed up as the link itself
    (host / "srv").symlink_to(outside)  # include goes through it: resolved inside the root (absent there)
    result = restic.backup(host, ["/var/lib/data", "/var/lib/planted", "/srv/secret"], [], NODE, "nightly")
    assert result.missing == ["/srv/secret"]
    files = "\n".join(_snapshot_files(restic))
    assert "orders.csv" in files and "planted" in files and "secret" not in files


def test_a_restore_never_writes_through_a_link_out_of_the_root(restic: Restic, host: Path, outside: Path) -> None:
    restic.backup(host, ["/var/lib/data"], [], NODE, "nightly")
    snap = choose_snapshot(restic.snapshots(NODE), SnapshotChoice(latest=True), "the repository")
    (host / "var/restore").symlink_to(outside)
    restore_snapshot(restic, snap, host, ["/var/lib/data/orders.csv"], target_dir="/var/restore")
    assert sorted(p.name for p in outside.iterdir()) == ["pid", "secret"]
    landed = host / str(outside).lstrip("/") / "var/lib/data/orders.csv"
    assert landed.read_text() == "id\n1\n"
    # the original place through a planted link: the link itself is replaced, its target left alone
    (host / "var/lib/data/orders.csv").unlink()
    (host / "var/lib/data/orders.csv").symlink_to(outside / "secret")
    restore_snapshot(restic, snap, host, ["/var/lib/data/orders.csv"])
    assert (outside / "secret").read_text() == SECRET
    assert not (host / "var/lib/data/orders.csv").is_symlink()
