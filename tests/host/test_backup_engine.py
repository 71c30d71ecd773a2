"""The agent's backup engine on a real host root with the real restic, without a cluster: it runs what the
operator asked once (not again on the next pass), waits for its random delay, and checks the repository on
the check schedule, reporting a damaged pack."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from maculaos.agent.backup import BackupEngine, BackupSettings
from maculaos.api.backup import node_start_delay
from maculaos.devenv.controlplane import default_bin_dir
from maculaos.host.restic import Restic, local_repository

NODE = "macula-nuc-02"


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 10, 2, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now


def engine(host: Path, clock: Clock, reports: list[tuple[str, str, dict[str, Any]]],
           restic: str = str(default_bin_dir() / "restic")) -> BackupEngine:
    def report(plural: str, name: str, entry: dict[str, Any]) -> bool:
        reports.append((plural, name, entry))
        return True

    return BackupEngine(BackupSettings(NODE, host, restic),
                        lambda ref: {"password": "pw"}[ref.key], report, lambda *_: None, clock)


def backup_obj(run: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "nightly", "generation": 1, "creationTimestamp": "2026-01-10T00:00:00Z"},
            "spec": {"target": {"local": {"path": "/var/backups/r"}}, "include": ["/var/lib/data"],
                     "repositoryPasswordSecretRef": {"name": "repo", "key": "password"}, **spec},
            "status": {"run": run}}


def host_with_data(tmp_path: Path) -> Path:
    """A host root whose /var/lib/data (what backup_obj includes) holds one file, a.txt."""
    host = tmp_path / "host"
    (host / "var/lib/data").mkdir(parents=True)
    (host / "var/lib/data/a.txt").write_text("a")
    return host


def scheduled_run(**extra: Any) -> dict[str, Any]:
    """The operator's run of the 02:00 schedule, for NODE."""
    return {"id": "sched-1", "reason": "Scheduled", "scheduledTime": "2026-01-10T02:00:00Z", "nodes": [NODE],
            **extra}


def test_runs_once_after_its_delay_then_checks_on_schedule(tmp_path: Path) -> None:
    host = host_with_data(tmp_path)
    clock, reports = Clock(), []
    eng = engine(host, clock, reports)
    run = scheduled_run()
    obj = backup_obj(run, randomDelay="30m", check={"schedule": "0 4 * * *", "readDataPercent": 100})
    delay = node_start_delay(NODE, "sched-1", "30m")
    assert delay > dt.timedelta(seconds=1)

    eng.tick({"nightly": obj}, {}, {})
    assert reports[-1][2]["phase"] == "Waiting"
    clock.now += delay
    eng.tick({"nightly": obj}, {}, {})
    done = reports[-1][2]
    assert done["phase"] == "Succeeded" and done["runId"] == "sched-1" and done["lastSnapshotId"]
    count = len(reports)
    obj["status"]["nodes"] = {NODE: done}
    eng.tick({"nightly": obj}, {}, {})
    assert len(reports) == count  # the same run is not done twice, and the check is not due before 04:00

    clock.now = dt.datetime(2026, 1, 10, 4, 1, tzinfo=dt.timezone.utc)
    eng.tick({"nightly": obj}, {}, {})
    assert reports[-1][2]["lastCheckResult"] == "OK" and reports[-1][2]["lastSnapshotId"] == done["lastSnapshotId"]

    pack = max((p for p in (host / "var/backups/r/data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    pack.chmod(0o644)
    raw = bytearray(pack.read_bytes())
    raw[-40] ^= 0xFF
    pack.write_bytes(bytes(raw))
    obj["status"]["nodes"] = {NODE: reports[-1][2]}
    clock.now = dt.datetime(2026, 1, 11, 4, 1, tzinfo=dt.timezone.utc)
    eng.tick({"nightly": obj}, {}, {})
    assert "integrity check of" in reports[-1][2]["lastCheckResult"]
    assert (host / "var/lib/data/a.txt").read_text() == "a"


def test_a_node_not_in_the_run_does_nothing(tmp_path: Path) -> None:
    clock, reports = Clock(), []
    eng = engine(tmp_path, clock, reports)
    eng.tick({"nightly": backup_obj({"id": "r", "reason": "OnDemand", "nodes": ["other"]})}, {}, {})
    assert reports == []




def test_retention_runs_when_the_bound_or_the_day_calls_for_it(tmp_path: Path) -> None:
    """keepLast 2 + keepDaily 1 keeps at most 3: runs forget on the first run (count unknown), not while the
    count stays within 3 on the same day, at once when a run would make 4, and on the next day; the newest
    snapshot always survives and the entry says when retention ran and what it removed."""
    host = tmp_path / "host"
    (host / "var/lib/data").mkdir(parents=True)
    clock, reports = Clock(), []
    eng = engine(host, clock, reports)
    obj = backup_obj({}, retention={"keepLast": 2, "keepDaily": 1})
    repo = Restic(local_repository(host / "var/backups/r", "pw"), str(default_bin_dir() / "restic"))

    def run(run_id: str) -> dict[str, Any]:
        (host / "var/lib/data/a.txt").write_text(run_id)
        obj["status"]["run"] = {"id": run_id, "reason": "OnDemand", "nodes": [NODE]}
        eng.tick({"nightly": obj}, {}, {})
        entry = reports[-1][2]
        assert entry["phase"] == "Succeeded", entry
        obj["status"]["nodes"] = {NODE: entry}
        clock.now += dt.timedelta(minutes=10)
        return entry

    first = run("r1")
    assert first["lastRetentionTime"] == "2026-01-10T02:00:00Z" and first["lastRetentionRemoved"] == []
    assert first["snapshotCount"] == 1 and first["lastRetentionReason"] == "snapshot count unknown"
    second, third = run("r2"), run("r3")
    assert third["lastRetentionTime"] == first["lastRetentionTime"] and third["snapshotsRemoved"] == 0
    assert third["snapshotCount"] == 3 and len(repo.snapshots(NODE, "nightly")) == 3  # no forget ran
    fourth = run("r4")  # would make 4: forget now; one day's worth keeps the last 2 (r4 is also the daily)
    assert fourth["lastRetentionTime"] == "2026-01-10T02:30:00Z" and fourth["snapshotsRemoved"] == 2
    assert sorted(fourth["lastRetentionRemoved"]) == sorted(e["lastSnapshotId"][:8] for e in (first, second))
    kept = [s.id for s in repo.snapshots(NODE, "nightly")]
    assert fourth["snapshotCount"] == 2 and kept == [third["lastSnapshotId"], fourth["lastSnapshotId"]]

    clock.now = dt.datetime(2026, 1, 11, 2, 0, tzinfo=dt.timezone.utc)
    fifth = run("r5")  # 3 is within the bound, but a new day: the exact policy again
    assert fifth["lastRetentionReason"] == "not applied yet today"
    assert fifth["lastRetentionRemoved"] == [third["lastSnapshotId"][:8]]
    assert [s.id for s in repo.snapshots(NODE, "nightly")] == [fourth["lastSnapshotId"], fifth["lastSnapshotId"]]

    fresh = engine(host, clock, reports)  # a restarted agent reads what it knew from its status entry
    eng = fresh
    sixth = run("r6")
    assert sixth["lastRetentionTime"] == fifth["lastRetentionTime"]
    assert sixth["snapshotCount"] == 3 and sixth["snapshotsRemoved"] == 0
    assert len(repo.snapshots(NODE, "nightly")) == 3


def test_a_repository_created_by_the_run_is_not_asked_to_forget(tmp_path: Path) -> None:
    """The first run creates the repository: its one snapshot stays under any policy, so retention is
    recorded as applied without a `restic forget` (a lock and a key derivation: a third of a first backup's
    overhead). A restarted agent that lost its count on an existing repository does run forget."""
    host = host_with_data(tmp_path)
    calls = tmp_path / "restic-calls"
    shim = tmp_path / "restic"
    shim.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {default_bin_dir() / "restic"} "$@"\n')
    shim.chmod(0o755)
    clock, reports = Clock(), []
    obj = backup_obj({"id": "r1", "reason": "OnDemand", "nodes": [NODE]}, retention={"keepLast": 1})

    engine(host, clock, reports, str(shim)).tick({"nightly": obj}, {}, {})
    first = reports[-1][2]
    assert first["phase"] == "Succeeded" and first["snapshotCount"] == 1, first
    assert first["lastRetentionTime"] == "2026-01-10T02:00:00Z" and first["lastRetentionRemoved"] == []
    assert "init" in calls.read_text().split() and "forget" not in calls.read_text().split()

    calls.unlink()
    clock.now += dt.timedelta(minutes=10)
    obj["status"] = {"run": {"id": "r2", "reason": "OnDemand", "nodes": [NODE]}}  # the status entry is lost
    engine(host, clock, reports, str(shim)).tick({"nightly": obj}, {}, {})
    second = reports[-1][2]
    assert second["phase"] == "Succeeded" and second["snapshotsRemoved"] == 1, second
    assert second["lastRetentionRemoved"] == [first["lastSnapshotId"][:8]] and second["snapshotCount"] == 1
    assert "forget" in calls.read_text().split() and "init" not in calls.read_text().split()


def test_a_node_timed_out_before_it_started_does_not_start_late(tmp_path: Path) -> None:
    """The operator gave the slot away (run.timedOut): running now would exceed maxConcurrentNodes, so the
    node reports the run failed with the reason instead, and backs up nothing."""
    host = tmp_path / "host"
    (host / "var/lib/data").mkdir(parents=True)
    clock, reports = Clock(), []
    eng = engine(host, clock, reports)
    run = scheduled_run(timedOut=[NODE])
    eng.tick({"nightly": backup_obj(run, runTimeout="30m")}, {}, {})
    entry = reports[-1][2]
    assert entry["phase"] == "Failed" and entry["failure"] == "RunTimedOut" and "runTimeout 30m" in entry["message"]
    assert not (host / "var/backups/r").exists()
    eng.tick({"nightly": backup_obj(run, runTimeout="30m")}, {}, {})
    assert len(reports) == 1  # reported once


def test_a_check_schedule_that_never_fires_does_not_stop_the_engine(tmp_path: Path) -> None:
    """'0 0 30 2 *' parses but no date matches it (issue #18): the operator marks the Backup Invalid; an
    agent that meets it anyway backs up as asked and never checks, without raising on every pass."""
    host = host_with_data(tmp_path)
    clock, reports = Clock(), []
    eng = engine(host, clock, reports)
    run = scheduled_run()
    obj = backup_obj(run, check={"schedule": "0 0 30 2 *"})
    eng.tick({"nightly": obj}, {}, {})
    assert reports[-1][2]["phase"] == "Succeeded"
    obj["status"]["nodes"] = {NODE: reports[-1][2]}
    clock.now += dt.timedelta(days=400)
    eng.tick({"nightly": obj}, {}, {})
    assert "lastCheckResult" not in reports[-1][2]


def test_the_agent_refuses_a_restore_onto_the_system_and_touches_nothing(tmp_path: Path) -> None:
    """The operator marks such a Restore Invalid; the agent, which acts on what it watches, applies the same
    rule before it touches anything (issue #18)."""
    host = host_with_data(tmp_path)
    (host / "etc").mkdir()
    clock, reports = Clock(), []
    eng = engine(host, clock, reports)
    backup = backup_obj({})
    for name, spec in [("onto-etc", {"targetPath": "/etc"}), ("not-held", {"paths": ["/var/lib/maculaos"]})]:
        restore = {"metadata": {"name": name, "generation": 1, "uid": name},
                   "spec": {"backupName": "nightly", "nodeName": NODE, "snapshot": {"latest": True}, **spec}}
        eng.tick({"nightly": backup}, {name: restore}, {})
        entry = reports[-1][2]
        assert reports[-1][:2] == ("restores", name) and entry["phase"] == "Failed"
        assert entry["message"].startswith("not restored: spec.")
    assert list((host / "etc").iterdir()) == [] and not (host / "var/backups").exists()
