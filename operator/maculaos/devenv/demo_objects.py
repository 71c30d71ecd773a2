"""What the demo applies besides examples/: objects that can only work on its sandbox nodes, whose ports
are chosen at start. examples/ stays what a real site would write (systemd checks, a night window)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

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
        {"name": "disk", "type": "disk", "interval": "30s", "disk": {"path": "/var/lib", "threshold": "95%"}},
    ]
    return {"apiVersion": API_VERSION, "kind": "HealthCheck", "metadata": {"name": SANDBOX_HEALTHCHECK},
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


class DemoReleases(BaseModel):
    """The releases a demo serves from its local release index, for the tour's upgrade and rollback steps.
    `maculaos dev up` records them in its state file under "releases" when it serves an index; a demo
    without one has no such key, and the tour skips those steps."""

    model_config = ConfigDict(extra="forbid")

    release_index: str
    """The index's URL, as a NodeUpgrade's source.releaseIndex names it (http on loopback)."""
    installed: str
    """The version the nodes run when `dev up` is done (after any rollout of the demo's own)."""
    good: str
    """A version the index offers that the nodes do not run yet and that upgrades cleanly. The tour's
    NodeUpgrade to it must not be held by another one: a NodeUpgrade of the demo's own that still selects
    the nodes keeps them (its Waiting condition)."""
    bad: str
    """A version the index offers that installs and boots, then fails its health check: autoRollback takes
    the node back to the version it ran."""
