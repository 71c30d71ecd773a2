"""The agent's /metrics and /healthz, served over real HTTP on loopback."""

import pytest

from maculaos.agent import metrics
from tests.integration.scrape import get


def test_metrics_and_health() -> None:
    healthy = [True]
    server = metrics.serve("127.0.0.1", 0, lambda: healthy[0])
    port = server.server_address[1]
    try:
        metrics.record_pass(True, 0.02)
        metrics.set_roles({"macula.io/role-peer": "true", "macula.io/role-gateway": None})
        metrics.set_health("edge", {"checks": {"disk": {"ok": False, "restarts": 2}}})
        metrics.set_backup("nightly", True, 12.5, 4096, 1_700_000_000.0)
        metrics.set_backup("nightly", False, 3.0, 0, 1_700_000_100.0)
        code, body = get(port, "/metrics")
        assert code == 200
        assert 'maculaos_agent_converge_passes_total{result="ok"}' in body
        assert 'maculaos_mesh_role{role="gateway"} 0.0' in body and 'maculaos_mesh_role{role="peer"} 1.0' in body
        assert 'maculaos_healthcheck_up{check="disk",healthcheck="edge"} 0.0' in body
        assert 'maculaos_backup_last_run_succeeded{backup="nightly"} 0.0' in body
        assert 'maculaos_backup_last_success_timestamp_seconds{backup="nightly"} 1.7e+09' in body
        assert 'maculaos_backup_last_bytes_new{backup="nightly"} 4096.0' in body
        assert get(port, "/healthz") == (200, "ok\n")
        healthy[0] = False
        assert get(port, "/healthz") == (503, "stale\n")
        assert get(port, "/other")[0] == 404
    finally:
        server.shutdown()


@pytest.mark.parametrize("ok", [True, False])
def test_pass_results_are_counted_apart(ok: bool) -> None:
    before = metrics.PASSES.labels(result="ok" if ok else "failed")._value.get()
    metrics.record_pass(ok, 0.01)
    assert metrics.PASSES.labels(result="ok" if ok else "failed")._value.get() == before + 1


def test_labels_carry_names_only_never_secrets() -> None:
    """The agent's /metrics serves no secrets: every label is the name of an object, of a check or of a role
    (or a pass's result), never a URL, a path, a message or a value, where a password could ride along.
    A new label must be added here on purpose."""
    allowed = {"result", "role", "healthcheck", "check", "backup", "le"}
    families = [m for m in vars(metrics).values() if hasattr(m, "_labelnames")]
    assert len(families) >= 9
    for family in families:
        assert set(family._labelnames) <= allowed, (family._name, family._labelnames)
