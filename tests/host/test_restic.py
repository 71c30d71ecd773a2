"""Real restic 0.18 and a real rest-server on loopback: backup, retention, restore with swap, and each bad
input of issue #5 (wrong password, unreachable target, full target, missing include, live and stale locks,
a corrupt pack, a snapshot that does not exist) ending in a clear error with host data untouched."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from maculaos.api.backup import Retention
from maculaos.devenv.controlplane import default_bin_dir
from maculaos.devenv.processes import free_port
from maculaos.host.restic import (
    LockInfo,
    Repository,
    Restic,
    ResticError,
    ResticFailure,
    local_repository,
    lock_owner_gone,
    rest_repository,
)
from maculaos.host.restore import SnapshotChoice, choose_snapshot, restore_snapshot
from tests.diskfull import resize, small_tmpfs
from tests.restic_locks import REUSED_PID, hold_lock, leave_stale_lock
from tests.restserver import RestServer

NODE = "macula-nuc-01"
RESTIC = str(default_bin_dir() / "restic")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    data = root / "var/lib/data"
    (data / "shop").mkdir(parents=True)
    (data / "shop/orders.csv").write_text("id,total\n1,9.50\n")
    (data / "big.bin").write_bytes(os.urandom(300_000))
    (root / "var/lib/maculaos").mkdir(parents=True)
    (root / "var/lib/maculaos/config.yaml").write_text("maculaos:\n  hostname: macula-nuc-01\n")
    return root


@pytest.fixture
def restic(tmp_path: Path) -> Restic:
    return Restic(local_repository(tmp_path / "repo", "correct horse"), RESTIC, hostname=os.uname().nodename)


INCLUDE = ["/var/lib/maculaos", "/var/lib/data"]


def backup(restic: Restic, host: Path, include: list[str] | None = None) -> str:
    restic.ensure_initialized()
    return restic.backup(host, include or INCLUDE, [], NODE, "nightly").summary.snapshot_id


def test_first_use_initialises_then_backs_up_and_reports(restic: Restic, host: Path) -> None:
    assert restic.ensure_initialized() is True
    assert restic.ensure_initialized() is False
    result = restic.backup(host, INCLUDE, ["*.tmp"], NODE, "nightly")
    assert result.summary.files_new == 3 and result.summary.data_added > 300_000 and not result.missing
    (host / "var/lib/data/shop/orders.csv").write_text("id,total\n1,9.50\n2,3.00\n")
    again = restic.backup(host, INCLUDE, [], NODE, "nightly")
    assert again.summary.files_new == 0 and again.summary.files_changed == 1
    snaps = restic.snapshots(NODE, "nightly")
    assert [s.id for s in snaps] == [result.summary.snapshot_id, again.summary.snapshot_id]
    assert snaps[0].hostname == NODE


def test_backup_over_rest_server(rest_server: RestServer, host: Path) -> None:
    restic = Restic(rest_repository(f"{rest_server.url}/{NODE}", "pw"), RESTIC)
    snapshot = backup(restic, host)
    assert (rest_server.data / NODE / "config").exists()
    assert restic.snapshots(NODE)[0].id == snapshot


def test_retention_never_removes_the_newest(restic: Restic, host: Path) -> None:
    ids = [backup(restic, host) for _ in range(3)]
    removed = restic.forget(Retention(keep_last=0, keep_within="1h"), NODE, "nightly").removed
    assert removed == []  # all within the hour
    removed = restic.forget(Retention(keep_last=0, keep_daily=0, keep_within=None, keep_hourly=0, keep_weekly=0,
                                      keep_monthly=0, keep_yearly=1), NODE, "nightly").removed
    # keep_yearly 1 keeps one of this year; keep-last is forced to 1 so the newest is the one kept
    assert sorted(removed) == sorted(ids[:2])
    assert [s.id for s in restic.snapshots(NODE, "nightly")] == [ids[2]]


def test_retention_spans_runs_and_incremental_runs_find_their_parent(restic: Restic, host: Path) -> None:
    """Each run tags its snapshot with its own run id: retention must still see one series, and the next
    run must still find the previous snapshot as parent (unchanged files not read again)."""
    restic.ensure_initialized()
    ids = [restic.backup(host, INCLUDE, [], NODE, "nightly", [f"maculaos-run=r{i}"]).summary for i in range(3)]
    assert ids[1].files_unmodified == 3 and ids[2].files_new == 0
    removed = restic.forget(Retention(keep_last=2), NODE, "nightly").removed
    assert removed == [ids[0].snapshot_id]


def test_missing_include_path_is_reported_and_the_rest_backed_up(restic: Restic, host: Path) -> None:
    restic.ensure_initialized()
    result = restic.backup(host, [*INCLUDE, "/var/lib/not-here"], [], NODE, "nightly")
    assert result.missing == ["/var/lib/not-here"]
    with pytest.raises(ResticError) as err:
        restic.backup(host, ["/nope", "/also-nope"], [], NODE, "nightly")
    assert err.value.failure is ResticFailure.INCLUDE_MISSING and "/nope" in str(err.value)


def test_wrong_password_is_named_and_nothing_is_reinitialised(tmp_path: Path, restic: Restic, host: Path) -> None:
    first = backup(restic, host)
    config = (tmp_path / "repo/config").read_bytes()
    wrong = Restic(local_repository(tmp_path / "repo", "wrong"), RESTIC)
    with pytest.raises(ResticError) as err:
        wrong.ensure_initialized()
    assert err.value.failure is ResticFailure.WRONG_PASSWORD
    assert "repositoryPasswordSecretRef" in str(err.value)
    assert (tmp_path / "repo/config").read_bytes() == config
    assert [s.id for s in restic.snapshots(NODE)] == [first]


def test_unreachable_target_fails_fast_with_the_address() -> None:
    port = free_port()
    restic = Restic(rest_repository(f"http://127.0.0.1:{port}/{NODE}", "pw"), RESTIC)
    started = time.monotonic()
    with pytest.raises(ResticError) as err:
        restic.ensure_initialized()
    assert err.value.failure is ResticFailure.UNREACHABLE
    assert f"127.0.0.1:{port}" in str(err.value) and "refused" in str(err.value).lower()
    assert time.monotonic() - started < 30


def test_every_call_on_a_target_that_went_away_fails_fast_naming_it(tmp_path: Path) -> None:
    """Not only the first one: a peer that dies after the repository was opened (mesh copies, a check, a
    restore listing every peer's snapshots) fails each call in a moment, where restic alone retries for
    many minutes while the agent waits."""
    restic = Restic(rest_repository(f"http://127.0.0.1:{free_port()}/{NODE}", "pw"), RESTIC)
    calls = {"snapshots": lambda: restic.snapshots(NODE), "check": lambda: restic.check(),
             "forget": lambda: restic.forget(Retention(keep_last=1), NODE, "nightly"), "locks": restic.locks,
             "restore": lambda: restic.restore("latest", tmp_path / "staging")}
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(ResticError) as err:
            call()
        assert err.value.failure is ResticFailure.UNREACHABLE, (name, err.value)
        assert restic.repo.display() in str(err.value), name
        assert time.monotonic() - started < 5, f"{name} took {time.monotonic() - started:.0f}s"


def test_full_target_is_reported_and_host_data_untouched(tmp_path: Path, host: Path) -> None:
    full = tmp_path / "small"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(full)], check=True)
    try:
        restic = Restic(local_repository(full / "repo", "pw"), RESTIC)
        (host / "var/lib/data/big2.bin").write_bytes(os.urandom(4_000_000))
        before = tree(host)
        with pytest.raises(ResticError) as err:
            backup(restic, host)
        assert err.value.failure is ResticFailure.NO_SPACE and "full" in str(err.value)
        assert tree(host) == before
    finally:
        subprocess.run(["umount", str(full)], check=False)


def _hold_lock(restic: Restic) -> subprocess.Popen[bytes]:
    return hold_lock(restic.repo.environment())


def test_live_lock_is_left_alone_and_named(restic: Restic, host: Path) -> None:
    backup(restic, host)
    holder = _hold_lock(restic)
    try:
        with pytest.raises(ResticError) as err:
            restic.forget(Retention(keep_last=1), NODE, "nightly")
        assert err.value.failure is ResticFailure.LOCKED
        assert f"pid {holder.pid}" in str(err.value) and "left in place" in str(err.value)
        assert len(restic.locks()) == 1
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(10)


def test_stale_lock_of_a_dead_process_is_removed(restic: Restic, host: Path) -> None:
    first = backup(restic, host)
    holder = _hold_lock(restic)
    os.killpg(holder.pid, signal.SIGKILL)  # dies without releasing: the lock stays behind
    holder.wait(10)
    assert len(restic.locks()) == 1
    second = backup(restic, host)
    removed = restic.forget(Retention(keep_last=1), NODE, "nightly").removed
    assert removed == [first] and restic.locks() == {}
    assert [s.id for s in restic.snapshots(NODE, "nightly")] == [second]


def test_lock_of_a_node_that_died_is_removed_though_its_pid_was_reused(restic: Restic, host: Path) -> None:
    """The node died mid-backup and booted again: the lock's pid (1 here, restic ran in a PID namespace of
    its own) now belongs to another live process. Not restic, so not the owner: the lock is removed
    (it used to be taken for a live one, and the node's backups stayed locked out for good)."""
    first = backup(restic, host)
    leave_stale_lock(restic.repo.environment(), REUSED_PID)
    assert [lk.pid for lk in restic.locks().values()] == [1]
    second = backup(restic, host)
    assert restic.forget(Retention(keep_last=1), NODE, "nightly").removed == [first] and restic.locks() == {}
    assert [s.id for s in restic.snapshots(NODE, "nightly")] == [second]


def test_a_lock_from_before_this_boot_is_stale_and_a_live_restic_is_not(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "comm").write_text("systemd\n")
    (proc / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
    booted = dt.datetime.fromtimestamp(1700000000, dt.timezone.utc)
    before, after = booted - dt.timedelta(minutes=1), booted + dt.timedelta(minutes=1)
    me = os.getpid()
    (proc / str(me)).mkdir()
    (proc / str(me) / "comm").write_text("restic\n")
    assert lock_owner_gone(LockInfo(time=before, hostname="n", pid=me), "n", proc), "older than the boot"
    assert not lock_owner_gone(LockInfo(time=after, hostname="n", pid=me), "n", proc), "a live restic"
    assert lock_owner_gone(LockInfo(time=after, hostname="n", pid=1), "n", proc), "pid 1 runs systemd"
    assert not lock_owner_gone(LockInfo(time=before, hostname="other", pid=1), "n", proc), "another host's"
    assert not lock_owner_gone(LockInfo(time=after, hostname="n", pid=0), "n", proc), "no pid: unknown"


def test_lock_of_another_host_is_never_judged_stale(tmp_path: Path, host: Path) -> None:
    repo = local_repository(tmp_path / "repo", "pw")
    backup(Restic(repo, RESTIC), host)
    holder = _hold_lock(Restic(repo, RESTIC))
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait(10)
    other_host = Restic(repo, RESTIC, hostname="another-node")  # the lock's pid means nothing there
    with pytest.raises(ResticError) as err:
        other_host.remove_stale_locks()
    assert err.value.failure is ResticFailure.LOCKED and len(other_host.locks()) == 1


def test_restore_latest_swaps_data_into_place(restic: Restic, host: Path) -> None:
    before = tree(host)
    backup(restic, host)
    orders = host / "var/lib/data/shop/orders.csv"
    orders.write_text("overwritten by mistake\n")
    (host / "var/lib/data/new-junk").write_text("x")
    snap = choose_snapshot(restic.snapshots(NODE), SnapshotChoice(latest=True), "the repository")
    restored = restore_snapshot(restic, snap, host)
    assert sorted(restored) == sorted(INCLUDE) and tree(host) == before
    assert not [p for p in (host / "var/lib").iterdir() if "maculaos-" in p.name]  # no staging left


def test_a_disk_too_full_to_stage_a_restore_changes_nothing_and_says_so(restic: Restic, host: Path) -> None:
    """/var/lib on a tmpfs with room for its data but not for a second, staged copy of it: the restore
    fails naming this node's disk (not the backup target, which is fine), the data keeps its current
    files, no staging is left behind holding space; once the disk has room the same restore works."""
    original = tree(host)
    backup(restic, host)
    orders = host / "var/lib/data/shop/orders.csv"
    orders.write_text("overwritten by mistake\n")
    snap = choose_snapshot(restic.snapshots(NODE), SnapshotChoice(latest=True), "the repository")
    with small_tmpfs(host / "var/lib", 450 * 1024) as var_lib:
        current = tree(host)
        with pytest.raises(ResticError) as err:
            restore_snapshot(restic, snap, host)
        assert err.value.failure is ResticFailure.NODE_FULL, err.value
        assert "no space left" in str(err.value) and "this node" in str(err.value), err.value
        assert "backup target" not in str(err.value), "the target is not the full one"
        assert "nothing changed" in str(err.value)
        assert tree(host) == current, "the restore target keeps its files"
        assert not [p for p in var_lib.iterdir() if "maculaos-" in p.name], "no staging left holding space"
        resize(var_lib, 4 * 1024 * 1024)  # the disk has room again
        assert sorted(restore_snapshot(restic, snap, host)) == sorted(INCLUDE)
        assert tree(host) == original
        assert not [p for p in var_lib.iterdir() if "maculaos-" in p.name]


def test_restore_single_file_to_a_target_directory(restic: Restic, host: Path) -> None:
    backup(restic, host)
    snap = choose_snapshot(restic.snapshots(NODE), SnapshotChoice(latest=True), "the repository")
    restore_snapshot(restic, snap, host, ["/var/lib/data/shop/orders.csv"], target_dir="/var/restore")
    assert (host / "var/restore/var/lib/data/shop/orders.csv").read_text() == "id,total\n1,9.50\n"
    assert not (host / "var/restore/var/lib/data/big.bin").exists()


def test_restore_before_a_date_picks_the_older_snapshot(restic: Restic, host: Path) -> None:
    first = backup(restic, host)
    time.sleep(1.1)
    cut = dt.datetime.now(dt.timezone.utc)
    time.sleep(1.1)
    backup(restic, host)
    snaps = restic.snapshots(NODE)
    assert choose_snapshot(snaps, SnapshotChoice(before=cut), "r").id == first
    with pytest.raises(ResticError) as err:
        choose_snapshot(snaps, SnapshotChoice(before=cut - dt.timedelta(days=1)), "the repository")
    assert err.value.failure is ResticFailure.SNAPSHOT_NOT_FOUND and "nothing restored" in str(err.value)


def test_restore_of_a_missing_snapshot_changes_nothing(restic: Restic, host: Path) -> None:
    backup(restic, host)
    before = tree(host)
    with pytest.raises(ResticError) as err:
        choose_snapshot(restic.snapshots(NODE), SnapshotChoice(snapshot_id="deadbeef"), "the repository")
    assert err.value.failure is ResticFailure.SNAPSHOT_NOT_FOUND and "deadbeef" in str(err.value)
    snap = restic.snapshots(NODE)[0]
    with pytest.raises(ResticError) as err:
        restore_snapshot(restic, snap, host, ["/etc/shadow"])
    assert "not in snapshot" in str(err.value)
    assert tree(host) == before


def test_corrupt_pack_fails_check_and_restore_leaves_data_intact(tmp_path: Path, restic: Restic, host: Path) -> None:
    backup(restic, host)
    packs = sorted((tmp_path / "repo/data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    biggest = packs[-1]  # the pack holding big.bin
    biggest.chmod(0o644)
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    biggest.write_bytes(bytes(raw))
    with pytest.raises(ResticError) as err:
        restic.check(read_data_percent=100)
    assert err.value.failure is ResticFailure.CORRUPT and "integrity check" in str(err.value)
    (host / "var/lib/data/big.bin").write_bytes(b"today's data")
    before = tree(host)
    snap = restic.snapshots(NODE)[0]
    with pytest.raises(ResticError) as err:
        restore_snapshot(restic, snap, host)
    assert "nothing changed" in str(err.value)
    assert tree(host) == before
    assert not [p for p in (host / "var/lib").iterdir() if "maculaos-" in p.name]


def test_credentials_never_reach_the_command_line(tmp_path: Path) -> None:
    repo = Repository("s3:https://s3.example/bucket/node", "secret-pw", {"AWS_SECRET_ACCESS_KEY": "k3y"})
    argv = Restic(repo, RESTIC)._argv(["snapshots"])
    assert not any("secret-pw" in a or "k3y" in a for a in argv)
