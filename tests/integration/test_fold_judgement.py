"""What follows from the nodes' entries (counts, Degraded, the Outcome column, a Restore's phase) shows within
moments of the agents' reports: the operator judges each object its fold wrote, not only on the periodic
resync. The operator here resyncs every 300 s, so only the fold can explain an update within seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from maculaos.agent.nodereport import Reporter
from maculaos.api import GROUP, VERSION
from maculaos.devenv.demo import start_operator
from maculaos.devenv.processes import ProcessRecord, stop
from tests.integration.conftest import Cluster, kube_of
from tests.integration.lookup import fetching_lookup

Create = Callable[[dict[str, Any]], dict[str, Any]]
#: Far longer than the waits below: no resync pass runs during a test.
RESYNC_SECONDS = 300
#: The fold waits at most a second within a burst; the rest is the judgement's few requests.
PROMPT_SECONDS = 5.0
NODES = ("macula-nuc-01", "macula-nuc-02", "macula-pi-03")


@pytest.fixture
def slow_resync_operator(cluster: Cluster, no_operator: None, tmp_path: Path) -> Iterator[ProcessRecord]:
    """The operator as its own process, resyncing every 300 s (the session's resyncs every 2 s: stopped)."""
    record = start_operator(cluster.plane.kubeconfig, tmp_path, resync_seconds=RESYNC_SECONDS, name="slow-resync")
    try:
        yield record
    finally:
        stop(record)
        print(Path(record.log).read_text()[-3000:])


def obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def agents(cluster: Cluster) -> dict[str, Reporter]:
    """Each node's NodeReport written by the agents' own Reporter (no agent process: the test says what)."""
    kube = kube_of(cluster.api)
    return {node: Reporter(kube, node, fetching_lookup(kube)) for node in NODES}


def status_of(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    return dict(cluster.get(kind, name).get("status") or {})


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == ctype), {})


def changes(cluster: Cluster, plural: str, name: str, since: str, seconds: int) -> list[dict[str, Any]]:
    """The object as each write after resourceVersion since left it, watched for that many seconds."""
    stream = watch.Watch().stream(client.CustomObjectsApi(cluster.api).list_cluster_custom_object, GROUP, VERSION,
                                  plural, field_selector=f"metadata.name={name}", resource_version=since,
                                  timeout_seconds=seconds)
    return [e["object"] for e in stream if e["type"] == "MODIFIED"]


def test_a_healthchecks_counts_and_conditions_follow_the_reports_at_once(
        cluster: Cluster, slow_resync_operator: ProcessRecord, created: Create) -> None:
    created(obj("HealthCheck", "prompt", {"checks": [{"name": "web", "type": "tcp", "tcp": {"port": 80}}]}))
    cluster.wait_condition("HealthCheck", "prompt", "True")
    assert status_of(cluster, "HealthCheck", "prompt")["matchedNodes"] == len(NODES)
    reporters = agents(cluster)
    for node, phase in zip(NODES, ("Healthy", "Healthy", "Unhealthy"), strict=True):
        assert reporters[node].node_entry("healthchecks", "prompt",
                                          {"phase": phase, "message": "port 80", "observedGeneration": 1})

    def judged(healthy: int, degraded: str, outcome: str) -> Callable[[], bool]:
        def check() -> bool:
            status = status_of(cluster, "HealthCheck", "prompt")
            return (status.get("healthyNodes"), condition(status, "Degraded").get("status"),
                    status.get("outcome")) == (healthy, degraded, outcome)
        return check

    cluster.wait_for(judged(2, "True", "2/3 healthy, 1 unhealthy"), timeout=PROMPT_SECONDS,
                     what="2 healthy nodes and Degraded, right after the reports")
    status = status_of(cluster, "HealthCheck", "prompt")
    assert "macula-pi-03: Unhealthy" in condition(status, "Degraded")["message"]
    assert condition(status, "Ready")["status"] == "True"

    assert reporters["macula-pi-03"].node_entry("healthchecks", "prompt",
                                                {"phase": "Healthy", "message": "port 80", "observedGeneration": 1})
    cluster.wait_for(judged(3, "False", "3/3 healthy"), timeout=PROMPT_SECONDS,
                     what="3 healthy nodes and Degraded cleared, right after the report")

    # A report that changes nothing the judgement shows: watchers get the fold's write and nothing more (a
    # judgement that drifted, e.g. stamped a time, would be a second change every agent decodes).
    since = cluster.get("HealthCheck", "prompt")["metadata"]["resourceVersion"]
    assert reporters["macula-nuc-01"].node_entry("healthchecks", "prompt",
                                                 {"phase": "Healthy", "message": "port 80 again",
                                                  "observedGeneration": 1})
    writes = changes(cluster, "healthchecks", "prompt", since, seconds=3)
    assert [w["status"]["nodes"]["macula-nuc-01"]["message"] for w in writes] == ["port 80 again"], writes


def test_a_restores_phase_follows_its_nodes_report_at_once(
        cluster: Cluster, slow_resync_operator: ProcessRecord, created: Create) -> None:
    created({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prompt-repo", "namespace": "maculaos-system"},
             "stringData": {"password": "pw"}})
    created(obj("Backup", "prompt", {"target": {"local": {"path": "/backups"}},
                                     "repositoryPasswordSecretRef": {"name": "prompt-repo", "key": "password"}}))
    created(obj("Restore", "prompt", {"backupName": "prompt", "nodeName": "macula-nuc-02",
                                      "snapshot": {"latest": True}, "targetPath": "/var/lib/restore-preview"}))
    cluster.wait_condition("Restore", "prompt", "True")
    assert status_of(cluster, "Restore", "prompt").get("phase") == "Pending"
    nuc = agents(cluster)["macula-nuc-02"]

    def phase(wanted: str) -> Callable[[], bool]:
        return lambda: status_of(cluster, "Restore", "prompt").get("phase") == wanted

    assert nuc.node_entry("restores", "prompt", {"phase": "Running", "message": "restoring", "observedGeneration": 1})
    cluster.wait_for(phase("Running"), timeout=PROMPT_SECONDS, what="the Restore Running, right after the report")
    assert nuc.node_entry("restores", "prompt", {"phase": "Succeeded", "message": "restored",
                                                 "observedGeneration": 1, "snapshotId": "0123456789abcdef"})
    cluster.wait_for(phase("Succeeded"), timeout=PROMPT_SECONDS, what="the Restore Succeeded, right after the report")
    status = status_of(cluster, "Restore", "prompt")
    assert (status["snapshotId"], status["outcome"]) == ("01234567", "macula-nuc-02: Succeeded")
