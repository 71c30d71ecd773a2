"""The agent's backup engine on a real host root with the real restic, without a cluster: it runs what the
operator asked once (not again on the next pass), waits for its random delay, and checks the repository on
the check schedule, reporting a damaged pack."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import logging
import os
import sqlite3
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

from maculaos.agent.backup import BackupEngine, BackupSettings, read_secret_with
from maculaos.api.backup import node_start_delay
from maculaos.devenv.controlplane import default_bin_dir
from maculaos.host.backup import K3S_COPY, K3S_DATASTORE
from maculaos.host.restic import Restic, local_repository, rest_repository
from maculaos.kube.rest import Credentials, KubeClient
from tests.diskfull import resize, small_tmpfs
from tests.restserver import start_rest_server

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
        assert phases(reports, name) == ["Failed"], "never reported Running: it never ran"
    assert list((host / "etc").iterdir()) == [] and not (host / "var/backups").exists()


def phases(reports: list[tuple[str, str, dict[str, Any]]], restore: str) -> list[str]:
    """The phases the agent reported for one Restore, in order."""
    return [entry["phase"] for plural, name, entry in reports if (plural, name) == ("restores", restore)]


def mesh_backup(run: dict[str, Any], peers: list[str]) -> dict[str, Any]:
    obj = backup_obj(run, target={"mesh": {"replicationFactor": 2}})
    obj["status"]["meshPeers"] = {NODE: peers}
    return obj


def test_one_of_two_mesh_peers_down_loses_nothing_and_the_next_run_catches_up(tmp_path: Path) -> None:
    """A replicated (mesh) Backup to two real rest-servers, the first of them killed between two runs: the
    run fails naming the dead peer and says the live one holds the snapshot; a Restore meanwhile comes from
    the live peer (the newest data, not a refusal because the first peer is away); once the peer is back,
    the next run writes both copies again."""
    host = host_with_data(tmp_path)
    servers = [start_rest_server(tmp_path / f"peer-{i}", tmp_path / "logs", f"peer-{i}") for i in range(2)]
    urls = [s.url for s in servers]
    repos = [f"rest:{u}/{NODE}/" for u in urls]
    clock, reports = Clock(), list[tuple[str, str, dict[str, Any]]]()
    eng = engine(host, clock, reports)

    def run(run_id: str) -> dict[str, Any]:
        eng.tick({"nightly": mesh_backup({"id": run_id, "reason": "OnDemand", "nodes": [NODE]}, urls)}, {}, {})
        assert reports[-1][:2] == ("backups", "nightly")
        return dict(reports[-1][2])

    def snapshots(i: int) -> list[str]:
        restic = Restic(rest_repository(f"{urls[i]}/{NODE}", "pw"), str(default_bin_dir() / "restic"))
        return [s.tag_value("maculaos-run") or "" for s in restic.snapshots(NODE, "nightly")]

    try:
        assert run("r1")["phase"] == "Succeeded"
        (host / "var/lib/data/a.txt").write_text("a, second day")
        servers[0].stop()
        entry = run("r2")
        assert entry["phase"] == "Failed" and entry["failure"] == "TargetUnreachable", entry
        assert repos[0] in entry["message"] and "cannot reach" in entry["message"], "the dead peer, by name"
        assert f"1 of 2 target(s) written ({repos[1]} holds snapshot" in entry["message"], entry["message"]
        assert snapshots(1) == ["r1", "r2"], "the live peer got its snapshot"

        (host / "var/lib/data/a.txt").write_text("lost by mistake")
        restore = {"metadata": {"name": "undo", "generation": 1, "uid": "u1"},
                   "spec": {"backupName": "nightly", "nodeName": NODE, "snapshot": {"latest": True}}}
        eng.tick({"nightly": mesh_backup({}, urls)}, {"undo": restore}, {})
        assert reports[-1][:2] == ("restores", "undo") and reports[-1][2]["phase"] == "Succeeded", reports[-1]
        assert (host / "var/lib/data/a.txt").read_text() == "a, second day", "the newest copy, from the live peer"

        port = int(urls[0].rsplit(":", 1)[1])
        servers[0] = start_rest_server(tmp_path / "peer-0", tmp_path / "logs", "peer-0-again", port=port)
        entry = run("r3")
        assert entry["phase"] == "Succeeded" and entry["targets"] == repos, entry
        assert snapshots(0) == ["r1", "r3"] and snapshots(1) == ["r1", "r2", "r3"], "both copies current again"
    finally:
        for server in servers:
            server.stop()


def test_a_disk_too_full_for_the_datastore_copy_fails_the_run_and_the_next_one_works(tmp_path: Path) -> None:
    """The k3s datastore is copied (SQLite's online backup) to a staging file before restic reads it; with
    the staging directory's disk full, the run ends Failed naming this node's disk, leaves no partial copy
    holding space, and is not retried forever; a later run with room backs up."""
    host = host_with_data(tmp_path)
    db = host / K3S_DATASTORE.lstrip("/")
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute("create table kine (id integer primary key, value blob)")
        conn.executemany("insert into kine (value) values (?)", [(os.urandom(1000),) for _ in range(400)])
    clock, reports = Clock(), list[tuple[str, str, dict[str, Any]]]()
    eng = engine(host, clock, reports)
    staging = host / K3S_COPY.lstrip("/")
    with small_tmpfs(staging.parent, 64 * 1024) as directory:
        eng.tick({"nightly": backup_obj({"id": "r1", "reason": "OnDemand", "nodes": [NODE]})}, {}, {})
        entry = reports[-1][2]
        assert entry["phase"] == "Failed" and entry["failure"] == "NodeDiskFull", entry
        assert str(directory) in entry["message"] and "k3s datastore" in entry["message"], entry["message"]
        assert list(directory.iterdir()) == [], "no partial copy left holding space"
        count = len(reports)
        eng.tick({"nightly": backup_obj({"id": "r1", "reason": "OnDemand", "nodes": [NODE]})}, {}, {})
        assert len(reports) == count, "a failed run is not retried on every pass"
        resize(directory, 4 * 1024 * 1024)
        eng.tick({"nightly": backup_obj({"id": "r2", "reason": "OnDemand", "nodes": [NODE]})}, {}, {})
        assert reports[-1][2]["phase"] == "Succeeded", reports[-1][2]


def test_a_local_repository_never_lands_through_a_link_out_of_the_host_root(tmp_path: Path) -> None:
    """target.local.path /var/backups/r with /var/backups on the node a link planted to a directory outside
    the node's root: the repository is written where the node itself would put it, inside the host root,
    and nothing appears outside (issue #18)."""
    host = host_with_data(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (host / "var/backups").symlink_to(outside)
    clock, reports = Clock(), list[tuple[str, str, dict[str, Any]]]()
    eng = engine(host, clock, reports)
    eng.tick({"nightly": backup_obj({"id": "r1", "reason": "OnDemand", "nodes": [NODE]})}, {}, {})
    assert reports[-1][2]["phase"] == "Succeeded", reports[-1][2]
    assert list(outside.iterdir()) == [], "nothing written outside the host root"
    assert (host / str(outside / "r").lstrip("/") / "config").is_file(), "the repository, inside the host root"


def test_a_disk_too_full_to_stage_a_restore_fails_it_and_changes_nothing(tmp_path: Path) -> None:
    """A Restore whose staging copy does not fit on the node's disk (/var/lib a tmpfs with room for its data,
    not for a second copy): the agent reports it Failed naming this node's disk, not the repository; the
    data keeps its current files, no staging is left holding space, and the Restore is not tried again on
    every pass. Once there is room, a new Restore brings the data back."""
    host = host_with_data(tmp_path)
    (host / "var/lib/data/big.bin").write_bytes(os.urandom(300 * 1024))  # incompressible: restic cannot shrink it
    clock, reports = Clock(), list[tuple[str, str, dict[str, Any]]]()
    eng = engine(host, clock, reports)
    eng.tick({"nightly": backup_obj({"id": "r1", "reason": "OnDemand", "nodes": [NODE]})}, {}, {})
    assert reports[-1][2]["phase"] == "Succeeded", reports[-1][2]
    (host / "var/lib/data/a.txt").write_text("lost by mistake")
    backup = backup_obj({})

    def restore(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "generation": 1, "uid": name},
                "spec": {"backupName": "nightly", "nodeName": NODE, "snapshot": {"latest": True}}}

    with small_tmpfs(host / "var/lib", 450 * 1024) as var_lib:
        eng.tick({"nightly": backup}, {"undo": restore("undo")}, {})
        plural, name, entry = reports[-1]
        assert (plural, name, entry["phase"]) == ("restores", "undo", "Failed"), reports[-1]
        assert "no space left on this node's disk" in entry["message"], entry["message"]
        assert "nothing changed" in entry["message"] and "backup target" not in entry["message"], entry["message"]
        assert (var_lib / "data/a.txt").read_text() == "lost by mistake", "the data keeps its current files"
        assert not [p for p in var_lib.rglob("*") if "maculaos-" in p.name], "no staging left holding space"
        count = len(reports)
        eng.tick({"nightly": backup}, {"undo": restore("undo")}, {})
        assert len(reports) == count, "a failed Restore is not tried again on every pass"
        resize(var_lib, 4 * 1024 * 1024)
        eng.tick({"nightly": backup}, {"undo-again": restore("undo-again")}, {})
        assert reports[-1][1] == "undo-again" and reports[-1][2]["phase"] == "Succeeded", reports[-1]
        assert (var_lib / "data/a.txt").read_text() == "a"


def test_a_restore_never_lands_in_a_system_directory_through_a_link(tmp_path: Path) -> None:
    """Names that pass the API's rule but lead into the system on the node: targetPath /var/lib/restored a
    link to /etc, or the data's parent /var/lib/data a link to /usr/local. The agent resolves them as the
    node would, refuses naming where they would land, and writes nothing there (issue #18); a targetPath
    that is a real directory restores."""
    host = host_with_data(tmp_path)
    clock, reports = Clock(), list[tuple[str, str, dict[str, Any]]]()
    eng = engine(host, clock, reports)
    eng.tick({"nightly": backup_obj({"id": "r1", "reason": "OnDemand", "nodes": [NODE]})}, {}, {})
    assert reports[-1][2]["phase"] == "Succeeded", reports[-1][2]
    (host / "etc").mkdir()
    (host / "var/lib/restored").symlink_to("/etc")

    def restore(name: str, **spec: Any) -> dict[str, Any]:
        obj = {"metadata": {"name": name, "generation": 1, "uid": name},
               "spec": {"backupName": "nightly", "nodeName": NODE, "snapshot": {"latest": True}, **spec}}
        eng.tick({"nightly": backup_obj({})}, {name: obj}, {})
        assert reports[-1][:2] == ("restores", name)
        return reports[-1][2]

    entry = restore("into-etc", targetPath="/var/lib/restored")
    assert entry["phase"] == "Failed", entry
    assert "/var/lib/data would land in /etc/var/lib/data through a symbolic link" in entry["message"], entry
    assert list((host / "etc").iterdir()) == [], "nothing written in /etc"

    (host / "usr/local").mkdir(parents=True)
    (host / "var/lib/data").rename(host / "var/lib/data-real")
    (host / "var/lib/data").symlink_to("/usr/local")
    entry = restore("into-usr", paths=["/var/lib/data/a.txt"])
    assert entry["phase"] == "Failed" and "would land in /usr/local/a.txt" in entry["message"], entry
    assert list((host / "usr/local").iterdir()) == [], "nothing written in /usr"

    (host / "var/lib/elsewhere").mkdir()
    entry = restore("into-a-directory", targetPath="/var/lib/elsewhere")
    assert entry["phase"] == "Succeeded", entry
    assert (host / "var/lib/elsewhere/var/lib/data/a.txt").read_text() == "a"
    assert phases(reports, "into-etc") == phases(reports, "into-usr") == ["Failed"]
    assert phases(reports, "into-a-directory") == ["Running", "Succeeded"]


class SecretServer:
    """An HTTP server in the API server's place that answers every request with the status it is set to:
    200 with the repository's password Secret, or an error; closed, it refuses connections."""

    def __init__(self) -> None:
        self.status = HTTPStatus.OK
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                body = json.dumps({"kind": "Secret", "data": {"password": base64.b64encode(b"pw").decode()}}
                                  if outer.status == HTTPStatus.OK else {"kind": "Status"}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.client = KubeClient(Credentials(server=f"http://127.0.0.1:{self.http.server_address[1]}"), timeout=5)

    def close(self) -> None:
        if self.http.socket.fileno() != -1:
            self.http.shutdown()
            self.http.server_close()


def test_work_waits_while_the_api_server_cannot_give_the_repository_password(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The repository's password is in a Secret, read from the API server when work starts. While that
    server refuses connections or answers 503 (restarting, overloaded), a due run, a restore and an
    integrity check do not fail: they report nothing and start on the first pass after it answers. A 403
    is no outage: the run fails at once, naming the Secret, without having reported Running."""
    host = host_with_data(tmp_path)
    clock, reports = Clock(), list[tuple[str, str, dict[str, Any]]]()
    server = SecretServer()
    eng = engine(host, clock, reports)
    eng.read_secret = read_secret_with(server.client)
    obj = backup_obj({"id": "r1", "reason": "OnDemand", "nodes": [NODE]}, check={"schedule": "0 4 * * *"})
    restore = {"metadata": {"name": "undo", "generation": 1, "uid": "u1"},
               "spec": {"backupName": "nightly", "nodeName": NODE, "snapshot": {"latest": True},
                        "targetPath": "/var/lib/restored"}}
    (host / "var/lib/restored").mkdir()
    try:
        server.status = HTTPStatus.SERVICE_UNAVAILABLE
        for _ in range(3):
            eng.tick({"nightly": obj}, {"undo": restore}, {})
        assert reports == [], "nothing started, nothing reported"
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert [m.split(":")[0] for m in warned] == ["backup nightly run r1 waits for the API server",
                                                     "restore undo waits for the API server"], warned
        assert "503" in warned[0], warned
        server.status = HTTPStatus.OK
        eng.tick({"nightly": obj}, {"undo": restore}, {})
        assert [(name, entry["phase"]) for _, name, entry in reports] == [
            ("nightly", "Running"), ("nightly", "Succeeded"), ("undo", "Running"), ("undo", "Succeeded")], reports
        assert (host / "var/lib/restored/var/lib/data/a.txt").read_text() == "a"

        obj["status"]["nodes"] = {NODE: reports[1][2]}
        clock.now = dt.datetime(2026, 1, 10, 4, 1, tzinfo=dt.timezone.utc)
        server.close()
        count = len(reports)
        eng.tick({"nightly": obj}, {"undo": restore}, {})
        assert len(reports) == count, "the check waits while connections are refused"
        eng.read_secret = lambda ref: {"password": "pw"}[ref.key]
        eng.tick({"nightly": obj}, {"undo": restore}, {})
        assert reports[-1][2]["lastCheckResult"] == "OK", reports[-1]
        # The next day's outage is warned about again: the answer in between ended the first one.
        eng.read_secret = read_secret_with(server.client)
        obj["status"]["nodes"] = {NODE: reports[-1][2]}
        clock.now = dt.datetime(2026, 1, 11, 4, 1, tzinfo=dt.timezone.utc)
        eng.tick({"nightly": obj}, {"undo": restore}, {})
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum(m.startswith("integrity check of backup nightly waits") for m in warned) == 2, warned
    finally:
        server.close()

    forbidden = SecretServer()
    forbidden.status = HTTPStatus.FORBIDDEN
    eng.read_secret = read_secret_with(forbidden.client)
    try:
        count = len(reports)
        eng.tick({"nightly": backup_obj({"id": "r2", "reason": "OnDemand", "nodes": [NODE]})}, {}, {})
        assert [entry["phase"] for _, _, entry in reports[count:]] == ["Failed"], reports[count:]
        assert reports[-1][2]["lastError"].startswith("cannot read Secret "), reports[-1]
        assert reports[-1][2]["lastError"].endswith("/repo: 403 Forbidden"), reports[-1]
    finally:
        forbidden.close()
