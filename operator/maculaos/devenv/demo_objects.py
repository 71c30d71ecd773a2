"""What the demo applies besides examples/: objects that can only work on its sandbox nodes, whose ports
are chosen at start. examples/ stays what a real site would write (systemd checks, a night window)."""

from __future__ import annotations

from typing import Any

API_VERSION = "os.macula.io/v1alpha1"
#: The run-now token of the demo's first backup: one on-demand run, so the Restore example has a snapshot.
FIRST_BACKUP_TOKEN = "demo-first-backup"
#: The HealthCheck whose checks pass on sandbox nodes, and the one failing on purpose, capped.
SANDBOX_HEALTHCHECK = "demo-sandbox"
CAPPED_HEALTHCHECK = "demo-capped-restart"
#: A unit no machine has: the failing check's restarts fail, count against maxRestarts, then stop.
ABSENT_UNIT = "maculaos-demo-absent.service"
#: A privileged port nothing listens on (tcpmux, unused on any ordinary machine).
CLOSED_PORT = 1
#: The label of the HealthChecks that judge the demo's upgrades (the failing ones on purpose do not).
UPGRADE_GATE_LABEL = "macula.io/upgrade-gate"
#: The sandbox HealthCheck's disk check: each node's /var/lib, a folder of the demo's work directory, so
#: it measures the developer's own filesystem (`maculaos dev up` warns first when that is too full).
DISK_CHECK_PATH = "/var/lib"
DISK_CHECK_THRESHOLD = 95
#: The demo's own NodeUpgrades: the good release, and the bad build for the rollback story.
DEMO_UPGRADE = "demo-to-0-2-0"
BAD_UPGRADE = "demo-to-0-3-0-beta"


def sandbox_healthcheck(api_port: int, operator_port: int) -> dict[str, Any]:
    """tcp, http, process and disk checks that hold on sandbox nodes: they probe the demo's own control
    plane and operator, and the disk the node sandboxes live on."""
    checks = [
        {"name": "api-server-port", "type": "tcp", "interval": "10s", "timeout": "3s",
         "tcp": {"host": "127.0.0.1", "port": api_port}},
        {"name": "operator-health", "type": "http", "interval": "10s", "timeout": "3s",
         "http": {"url": f"http://127.0.0.1:{operator_port}/healthz"}},
        {"name": "api-server-process", "type": "process", "interval": "10s", "timeout": "3s",
         "process": {"name": "kube-apiserver"}},
        {"name": "disk", "type": "disk", "interval": "30s",
         "disk": {"path": DISK_CHECK_PATH, "threshold": f"{DISK_CHECK_THRESHOLD}%"}},
    ]
    return {"apiVersion": API_VERSION, "kind": "HealthCheck",
            "metadata": {"name": SANDBOX_HEALTHCHECK, "labels": {UPGRADE_GATE_LABEL: "true"}},
            "spec": {"checks": checks}}


def capped_healthcheck() -> dict[str, Any]:
    """A check that fails on purpose: its restarts fail (sandbox nodes have no systemd), count against
    maxRestarts, and stop at the cap; the node's history says each step."""
    check = {"name": "absent-service", "type": "tcp", "interval": "5s", "timeout": "2s", "failureThreshold": 2,
             "tcp": {"host": "127.0.0.1", "port": CLOSED_PORT},
             "restartOnFailure": True, "restartUnit": ABSENT_UNIT, "maxRestarts": 2, "restartWindow": "1h",
             "cooldown": "5s"}
    return {"apiVersion": API_VERSION, "kind": "HealthCheck", "metadata": {"name": CAPPED_HEALTHCHECK},
            "spec": {"checks": [check]}}


def demo_upgrade(index_url: str, version: str = "0.2.0", channel: str = "stable", name: str = DEMO_UPGRADE,
                 health_check_wait: str = "10s", delay_between_nodes: str = "5s") -> dict[str, Any]:
    """examples/nodeupgrade.yaml's rollout without its night window, from the demo's local release index:
    one node at a time, stopping at the first failure, judged by the sandbox checks only (the capped check
    and the examples' systemd checks fail on sandbox nodes by nature)."""
    return {"apiVersion": API_VERSION, "kind": "NodeUpgrade", "metadata": {"name": name},
            "spec": {"version": version, "channel": channel, "source": {"releaseIndex": index_url},
                     "strategy": {"type": "rolling", "maxUnavailable": 1, "delayBetweenNodes": delay_between_nodes},
                     "failurePolicy": {"maxFailedNodes": 0, "action": "Pause"},
                     "healthCheckWait": health_check_wait, "healthCommitWindow": "3m",
                     "healthCheckSelector": {"matchLabels": {UPGRADE_GATE_LABEL: "true"}}}}


def bad_upgrade(index_url: str, **timings: str) -> dict[str, Any]:
    """The beta channel's 0.3.0, a build whose kernel panics: the first node boots back into its old slot
    by itself (RolledBack) and the rollout stops there (Failed), the other nodes untouched."""
    return demo_upgrade(index_url, version="0.3.0", channel="beta", name=BAD_UPGRADE, **timings)
