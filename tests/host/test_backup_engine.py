"""The agent's backup engine on a real host root with the real restic, without a cluster: it runs what the
operator asked once (not again on the next pass), waits for its random delay, and checks the repository on
the check schedule, reporting a damaged pack."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from maculaos.agent.backups import BackupEngine, BackupSettings
from maculaos.api.backup import node_start_delay
from maculaos.api.common import SecretKeyRef
from maculaos.devenv.controlplane import default_bin_dir

NODE = "macula-nuc-02"


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 10, 2, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now


def engine(host: Path, clock: Clock, reports: list[tuple[str, str, dict[str, Any]]]) -> BackupEngine:
    def report(plural: str, name: str, entry: dict[str, Any]) -> bool:
        reports.append((plural, name, entry))
        return True

    return BackupEngine(BackupSettings(NODE, host, str(default_bin_dir() / "restic")),
                        lambda ref: {"password": "pw"}[ref.key], report, lambda *_: None, clock)


def backup_obj(run: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "nightly", "generation": 1, "creationTimestamp": "2026-01-10T00:00:00Z"},
            "spec": {"target": {"local": {"path": "/var/backups/r"}}, "include": ["/var/lib/data"],
                     "repositoryPasswordSecretRef": {"name": "repo", "key": "password"}, **spec},
            "status": {"run": run}}


def test_runs_once_after_its_delay_then_checks_on_schedule(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "var/lib/data").mkdir(parents=True)
    (host / "var/lib/data/a.txt").write_text("a")
    clock, reports = Clock(), []
    eng = engine(host, clock, reports)
    run = {"id": "sched-1", "reason": "Scheduled", "scheduledTime": "2026-01-10T02:00:00Z", "nodes": [NODE]}
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


