"""The HealthCheck engine with real probes and a clock the test moves: thresholds, capped restarts with
backoff, systemd's start limit respected, clean-up steps reported."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from maculaos.agent.healthcheck import HealthEngine
from maculaos.host.systemd import Systemd
from tests.fakes import fake_systemctl, restarts, set_unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def healthcheck(*checks: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "hc", "generation": generation}, "spec": {"checks": list(checks)}}


@pytest.fixture
def engine(tmp_path: Path) -> tuple[HealthEngine, Clock, Path, list[tuple[str, ...]]]:
    systemctl = fake_systemctl(tmp_path / "systemd")
    clock = Clock()
    events: list[tuple[str, ...]] = []
    engine = HealthEngine(tmp_path / "host", Systemd(tmp_path / "host", live=True, systemctl=str(systemctl)),
                          lambda *e: events.append(e), clock)
    (tmp_path / "host/var/log").mkdir(parents=True)
    return engine, clock, systemctl, events


def run(engine: HealthEngine, clock: Clock, obj: dict[str, Any], seconds: float = 30) -> dict[str, Any]:
    entry = engine.run_due({"hc": obj})["hc"]
    clock.now += seconds
    return entry


K3S = {"name": "k3s", "type": "systemd", "systemd": {"unit": "k3s.service"}, "restartOnFailure": True,
       "maxRestarts": 2, "restartWindow": "1h", "cooldown": "1m", "failureThreshold": 2}


def test_threshold_then_capped_restarts_with_backoff(engine: Any) -> None:
    engine, clock, systemctl, events = engine
    obj = healthcheck(K3S)
    first = run(engine, clock, obj)
    assert first["phase"] == "Healthy" and first["checks"]["k3s"]["consecutiveFailures"] == 1  # below threshold
    second = run(engine, clock, obj)
    assert second["phase"] == "Unhealthy" and restarts(systemctl, "k3s.service") == 1
    assert ("hc", "k3s", "Warning", "CheckFailed") == events[0][:4]
    def crashing_run() -> dict[str, Any]:
        set_unit(systemctl, "k3s.service", active="failed")  # each restart is followed by another crash
        return run(engine, clock, obj)

    crashing_run()  # 30 s after the restart: within the doubled backoff (2 min), no restart
    assert restarts(systemctl, "k3s.service") == 1
    for _ in range(4):
        crashing_run()
    assert restarts(systemctl, "k3s.service") == 2
    for _ in range(10):
        last = crashing_run()
    assert restarts(systemctl, "k3s.service") == 2, "maxRestarts within the window is a hard cap"
    assert "not restarting k3s.service: 2 restart(s) within 1h" in last["checks"]["k3s"]["lastAction"]
    history = last["checks"]["k3s"]["history"]
    assert last["checks"]["k3s"]["restarts"] == 2 and len(history) == 3, history
    assert "alerting only" in history[2], "the history says once why the restarts stopped"


def test_a_restart_that_fails_counts_against_the_cap(engine: Any) -> None:
    engine, clock, systemctl, events = engine
    set_unit(systemctl, "k3s.service", active="failed")
    (systemctl.parent / "state" / "k3s.service.restart-fails").touch()
    obj = healthcheck(K3S)
    for _ in range(20):
        last = run(engine, clock, obj)
    assert restarts(systemctl, "k3s.service") == 2, "a unit that cannot restart is not retried on every run"
    history = last["checks"]["k3s"]["history"]
    assert [h.split(" ", 1)[1].split(":")[0] for h in history] == [
        "restart of k3s.service failed (1/2 in 1h)", "restart of k3s.service failed (2/2 in 1h)",
        "not restarting k3s.service"], history
    assert "Job for k3s.service failed." in history[0]
    assert [e[3] for e in events].count("RestartFailed") == 2


def test_systemd_start_limit_is_respected(engine: Any) -> None:
    engine, clock, systemctl, _ = engine
    set_unit(systemctl, "k3s.service", active="failed", result="start-limit-hit")
    obj = healthcheck(K3S)
    for _ in range(3):
        last = run(engine, clock, obj)
    assert restarts(systemctl, "k3s.service") == 0
    assert "systemd hit its start limit" in last["checks"]["k3s"]["lastAction"]


def test_recovery_resets_and_is_announced(engine: Any) -> None:
    engine, clock, systemctl, events = engine
    obj = healthcheck({**K3S, "restartOnFailure": False})
    run(engine, clock, obj)
    run(engine, clock, obj)
    set_unit(systemctl, "k3s.service")
    healthy = run(engine, clock, obj)
    assert healthy["phase"] == "Healthy" and healthy["checks"]["k3s"]["consecutiveFailures"] == 0
    assert [e[3] for e in events] == ["CheckFailed", "CheckRecovered"]


def test_disk_cleanup_steps_are_reported(engine: Any, tmp_path: Path) -> None:
    engine, clock, _, events = engine
    logs = tmp_path / "host/var/log"
    old, recent, live = logs / "syslog.3.gz", logs / "syslog.1", logs / "syslog"
    for path in (old, recent, live):
        path.write_bytes(b"x" * 4096)
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    (tmp_path / "host/var/lib").mkdir(parents=True)
    disk = {"name": "disk", "type": "disk", "disk": {"path": "/var/lib", "threshold": "0%"}, "action": "cleanup",
            "failureThreshold": 1, "cleanup": {"pruneImages": True, "removeLogsOlderThan": "168h"}}
    entry = run(engine, clock, healthcheck(disk))
    action = entry["checks"]["disk"]["lastAction"]
    assert "journal: no persistent journal" in action
    assert "images: crictl not available here, skipped" in action
    assert "logs: removed 1 rotated log(s) older than 168h" in action
    assert not old.exists() and recent.exists() and live.exists()
    assert "DiskCleanup" in [e[3] for e in events]


def test_state_follows_renames_and_removals(engine: Any) -> None:
    engine, clock, _, _ = engine
    run(engine, clock, healthcheck(K3S))
    assert ("hc", "k3s") in engine.states
    run(engine, clock, healthcheck({**K3S, "name": "k3s-server"}, generation=2))
    assert set(engine.states) == {("hc", "k3s-server")}


def test_invalid_spec_is_reported_not_run(engine: Any) -> None:
    engine, _, _, _ = engine
    entry = engine.run_due({"hc": healthcheck({"name": "x", "type": "tcp", "tcp": {"port": 99999}})})["hc"]
    assert entry["phase"] == "Invalid"
