"""The operator's metrics: the fleet collector's samples from real object bodies, the reconcile counters,
and the probes' answers over real HTTP on loopback."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from maculaos import metrics_http
from maculaos.controller import metrics
from maculaos.controller.fleet_metrics import FAMILIES, Fleet
from tests.integration.scrape import get

NOW = 1_800_000_000.0


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def fleet_registry() -> tuple[Fleet, CollectorRegistry]:
    registry = CollectorRegistry()
    fleet = Fleet(clock=lambda: NOW)
    registry.register(fleet)
    return fleet, registry


def nodeupgrade(name: str, phase: str, paused: bool = False, **counts: int) -> dict[str, Any]:
    return {"kind": "NodeUpgrade", "metadata": {"name": name}, "spec": {"paused": paused},
            "status": {"phase": phase, **counts}}


def test_rollout_progress_per_nodeupgrade() -> None:
    fleet, registry = fleet_registry()
    fleet.observe("ADDED", nodeupgrade("to-0-2-0", "Progressing", matchedNodes=3, upgradedNodes=1, failedNodes=1,
                                       disruptedNodes=1))
    fleet.observe("ADDED", nodeupgrade("held", "Paused", paused=True))
    assert sample(registry, "maculaos_nodeupgrade_nodes", nodeupgrade="to-0-2-0", state="upgraded") == 1
    assert sample(registry, "maculaos_nodeupgrade_nodes", nodeupgrade="to-0-2-0", state="matched") == 3
    assert sample(registry, "maculaos_nodeupgrade_nodes", nodeupgrade="to-0-2-0", state="disrupted") == 1
    assert sample(registry, "maculaos_nodeupgrade_phase", nodeupgrade="to-0-2-0", phase="Progressing") == 1
    assert sample(registry, "maculaos_nodeupgrade_phase", nodeupgrade="to-0-2-0", phase="Failed") == 0
    assert sample(registry, "maculaos_nodeupgrade_paused", nodeupgrade="held") == 1
    assert sample(registry, "maculaos_nodeupgrade_paused", nodeupgrade="to-0-2-0") == 0
    fleet.observe("MODIFIED", nodeupgrade("to-0-2-0", "Succeeded", matchedNodes=3, upgradedNodes=3))
    assert sample(registry, "maculaos_nodeupgrade_nodes", nodeupgrade="to-0-2-0", state="upgraded") == 3
    assert sample(registry, "maculaos_nodeupgrade_phase", nodeupgrade="to-0-2-0", phase="Succeeded") == 1
    fleet.observe("DELETED", nodeupgrade("to-0-2-0", "Succeeded"))
    assert sample(registry, "maculaos_nodeupgrade_nodes", nodeupgrade="to-0-2-0", state="upgraded") is None


def test_backup_age_per_node_from_the_folded_entries() -> None:
    fleet, registry = fleet_registry()
    fleet.observe("ADDED", {"kind": "Backup", "metadata": {"name": "nightly"}, "status": {"matchedNodes": 3, "nodes": {
        "nuc-01": {"phase": "Succeeded", "lastSuccessTime": "2027-01-15T08:00:00Z"},
        "nuc-02": {"phase": "Failed"},
        "nuc-03": {"phase": "Succeeded", "lastSuccessTime": "not a time"}}}})
    when = dt.datetime(2027, 1, 15, 8, tzinfo=dt.timezone.utc).timestamp()
    assert sample(registry, "maculaos_operator_backup_last_success_timestamp_seconds", backup="nightly",
                  node="nuc-01") == when
    assert sample(registry, "maculaos_operator_backup_age_seconds", backup="nightly", node="nuc-01") == NOW - when
    assert sample(registry, "maculaos_operator_backup_age_seconds", backup="nightly", node="nuc-02") is None
    assert sample(registry, "maculaos_operator_backup_age_seconds", backup="nightly", node="nuc-03") is None
    assert sample(registry, "maculaos_operator_backup_nodes", backup="nightly", state="succeeded") == 1
    assert sample(registry, "maculaos_operator_backup_nodes", backup="nightly", state="matched") == 3


def test_backup_age_grows_with_the_clock_and_never_goes_negative() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    fleet = Fleet(clock=clock)
    registry.register(fleet)
    fleet.observe("ADDED", {"kind": "Backup", "metadata": {"name": "b"}, "status": {"nodes": {
        "n": {"lastSuccessTime": "1970-01-01T00:01:00+00:00"}}}})
    clock.now = 100.0
    assert sample(registry, "maculaos_operator_backup_age_seconds", backup="b", node="n") == 40.0
    clock.now = 160.0
    assert sample(registry, "maculaos_operator_backup_age_seconds", backup="b", node="n") == 100.0
    clock.now = 30.0  # the node's clock ahead of ours
    assert sample(registry, "maculaos_operator_backup_age_seconds", backup="b", node="n") == 0.0


def test_health_and_versions() -> None:
    fleet, registry = fleet_registry()
    fleet.observe("ADDED", {"kind": "HealthCheck", "metadata": {"name": "edge"}, "status": {
        "matchedNodes": 2, "healthyNodes": 1,
        "nodes": {"a": {"phase": "Healthy"}, "b": {"phase": "Unhealthy"}, "c": "malformed"}}})
    fleet.observe("ADDED", {"kind": "MeshRole", "metadata": {"name": "ignored"}})
    fleet.observe_nodes({"a": {"os.macula.io/version": "0.2.0"}, "b": {}})
    assert sample(registry, "maculaos_operator_node_healthy", healthcheck="edge", node="a") == 1
    assert sample(registry, "maculaos_operator_node_healthy", healthcheck="edge", node="b") == 0
    assert sample(registry, "maculaos_operator_node_healthy", healthcheck="edge", node="c") is None
    assert sample(registry, "maculaos_operator_healthcheck_nodes", healthcheck="edge", state="healthy") == 1
    assert sample(registry, "maculaos_node_os_version_info", node="a", version="0.2.0") == 1
    assert sample(registry, "maculaos_node_os_version_info", node="b", version="unknown") == 1
    fleet.observe_nodes({"a": {"os.macula.io/version": "0.3.0"}})
    assert sample(registry, "maculaos_node_os_version_info", node="a", version="0.2.0") is None
    assert sample(registry, "maculaos_node_os_version_info", node="b", version="unknown") is None
    assert b"maculaos_mesh" not in generate_latest(registry)


def test_every_family_is_described_even_when_empty() -> None:
    _, registry = fleet_registry()
    text = generate_latest(registry).decode()
    for name in ("maculaos_nodeupgrade_nodes", "maculaos_operator_backup_age_seconds", "maculaos_node_os_version_info"):
        assert f"# TYPE {name} gauge" in text


@pytest.mark.parametrize("fails", [False, True])
def test_reconciles_and_errors_are_counted_per_kind(fails: bool) -> None:
    passes = metrics.RECONCILES.labels(kind="Backup")._value.get()
    errors = metrics.RECONCILE_ERRORS.labels(kind="Backup")._value.get()
    with pytest.raises(RuntimeError) if fails else _nothing():
        with metrics.counted("Backup"):
            if fails:
                raise RuntimeError("API server away")
    assert metrics.RECONCILES.labels(kind="Backup")._value.get() == passes + 1
    assert metrics.RECONCILE_ERRORS.labels(kind="Backup")._value.get() == errors + (1 if fails else 0)


class _nothing:  # noqa: N801 (a context manager used like pytest.raises)
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_probes_for_a_leader_and_a_standby() -> None:
    api_up = [True]

    def api_check() -> None:
        if not api_up[0]:
            raise ConnectionRefusedError("connection refused")

    clock = Clock()
    health = metrics.Health(leader_election=True, api_check=api_check, clock=clock)
    server = metrics_http.serve("127.0.0.1", 0, {"/healthz": health.liveness, "/readyz": health.readiness})
    port = server.server_address[1]
    try:
        assert get(port, "/readyz") == (200, "standby: the API server answers; waiting for the Lease\n")
        assert get(port, "/healthz") == (200, "ok\n")
        assert "maculaos_operator_leader 0.0" in get(port, "/metrics")[1]
        health.lead(True)
        assert get(port, "/readyz") == (503, "the controller is starting\n")
        health.start()
        assert get(port, "/readyz") == (200, "leader: reconciling\n")
        assert "maculaos_operator_leader 1.0" in get(port, "/metrics")[1]
        api_up[0] = False
        code, text = get(port, "/readyz")
        assert code == 503 and "cannot reach the Kubernetes API server: connection refused" in text
        clock.now += metrics.STALL_SECONDS + 1
        code, text = get(port, "/healthz")
        assert code == 503 and "has not run for 61 s" in text
        health.tick()
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/nothing")[0] == 404
    finally:
        server.shutdown()
        health.lead(False)


def test_without_leader_election_ready_once_started() -> None:
    health = metrics.Health(leader_election=False, api_check=lambda: None)
    assert health.readiness() == (False, "the controller is starting")
    health.start()
    assert health.readiness() == (True, "reconciling")


def test_a_probe_that_raises_fails_with_its_reason() -> None:
    def broken() -> tuple[bool, str]:
        raise KeyError("boom")

    server = metrics_http.serve("127.0.0.1", 0, {"/readyz": broken})
    try:
        assert get(server.server_address[1], "/readyz") == (503, "probe failed: 'boom'\n")
    finally:
        server.shutdown()


@pytest.mark.parametrize("value", ["", "http", "host:", "70000", "-1", "1.2.3.4:port"])
def test_bad_metrics_addresses_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="is not \\[HOST:\\]PORT"):
        metrics_http.parse_address(value)


@pytest.mark.parametrize("value,expected", [("9751", ("0.0.0.0", 9751)), ("127.0.0.1:0", ("127.0.0.1", 0))])
def test_metrics_addresses(value: str, expected: tuple[str, int]) -> None:
    assert metrics_http.parse_address(value) == expected


def test_labels_carry_names_only_never_secrets() -> None:
    """Like the agent's, the operator's /metrics serves no secrets: every label is the name of an object, a
    node, a kind, a state or phase, or a node's version label, never a URL, a message or a Secret's value.
    A new label must be added here on purpose."""
    allowed = {"kind", "nodeupgrade", "state", "phase", "backup", "node", "healthcheck", "version"}
    own = [m for m in vars(metrics).values() if hasattr(m, "_labelnames")]
    assert len(own) == 4
    labels = {label for m in own for label in m._labelnames} | {
        label for _, _, names in FAMILIES.values() for label in names}
    assert labels <= allowed, labels - allowed
