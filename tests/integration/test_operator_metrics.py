"""The operator's /metrics, /healthz and /readyz, scraped from the operator process over HTTP after it
reconciled objects on the real control plane, and a node's report folded into the backup age; the Outcome
column as `kubectl get -o wide` shows it."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from maculaos.agent.nodereport import Reporter
from tests.integration.conftest import Cluster, OperatorSupervisor, kube_of
from tests.integration.lookup import fetching_lookup
from tests.integration.scrape import get, scrape, value

Create = Callable[[dict[str, Any]], dict[str, Any]]
NODE = "macula-nuc-02"


def test_metrics_after_a_reconcile(cluster: Cluster, operator_supervisor: OperatorSupervisor,
                                   created: Create) -> None:
    operator_supervisor.ensure_running()
    port = operator_supervisor.metrics_port
    cluster.wait_for(lambda: get(port, "/readyz") == (200, "leader: reconciling\n"), what="the operator ready")
    assert get(port, "/healthz") == (200, "ok\n")
    created({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "metrics-repo", "namespace": "maculaos-system"},
             "stringData": {"password": "x"}})
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeUpgrade", "metadata": {"name": "metrics-held"},
             "spec": {"version": "0.2.0", "paused": True}})
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "Backup", "metadata": {"name": "metrics-nightly"},
             "spec": {"target": {"local": {"path": "/backups"}},
                      "repositoryPasswordSecretRef": {"name": "metrics-repo", "key": "password"}}})
    cluster.wait_condition("Backup", "metrics-nightly", "True")
    succeeded = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=2)
    stamp = succeeded.isoformat().replace("+00:00", "Z")
    agent = reporter(cluster)
    assert agent.node_entry("backups", "metrics-nightly", {"phase": "Succeeded", "lastSuccessTime": stamp})
    try:
        def folded() -> bool:
            return value(scrape(port), "maculaos_operator_backup_age_seconds", backup="metrics-nightly",
                         node=NODE) is not None

        cluster.wait_for(folded, what="the node's backup folded into the metrics")
        cluster.wait_for(lambda: value(scrape(port), "maculaos_nodeupgrade_nodes", nodeupgrade="metrics-held",
                                       state="matched") == 3, what="the NodeUpgrade's matched nodes")
        samples = scrape(port)
        age = value(samples, "maculaos_operator_backup_age_seconds", backup="metrics-nightly", node=NODE)
        assert age is not None and 7200 <= age < 7200 + 120
        assert value(samples, "maculaos_operator_backup_last_success_timestamp_seconds", backup="metrics-nightly",
                     node=NODE) == succeeded.timestamp()
        assert (value(samples, "maculaos_operator_reconcile_passes_total", kind="Backup") or 0) >= 1
        assert (value(samples, "maculaos_operator_reconcile_passes_total", kind="NodeUpgrade") or 0) >= 1
        assert value(samples, "maculaos_operator_leader") == 1
        assert (value(samples, "maculaos_operator_fold_latency_seconds_count") or 0) >= 1
        assert value(samples, "maculaos_nodeupgrade_paused", nodeupgrade="metrics-held") == 1
        phases = [p for (n, labels), v in samples.items() if n == "maculaos_nodeupgrade_phase" and v == 1
                  for k, p in labels if k == "phase" and ("nodeupgrade", "metrics-held") in labels]
        assert len(phases) == 1
        cluster.wait_for(lambda: value(scrape(port), "maculaos_node_os_version_info", node=NODE,
                                       version="0.1.0") == 1, what="the nodes' versions (from a resync)")
    finally:
        agent.node_entry("backups", "metrics-nightly", None)


def reporter(cluster: Cluster) -> Reporter:
    """NODE's agent's reporter (the real one), without the rest of the agent: the test says what it reports."""
    kube = kube_of(cluster.api)
    return Reporter(kube, NODE, fetching_lookup(kube))


def wide_row(cluster: Cluster, plural: str, name: str) -> dict[str, str]:
    """One object's row of `kubectl get -o wide`, by column header (columns split on 2+ spaces)."""
    lines = cluster.kubectl("get", plural, name, "-o", "wide").stdout.splitlines()
    headers, cells = (re.split(r"\s{2,}", line.strip()) for line in lines[:2])
    return dict(zip(headers, cells, strict=True))


def test_the_outcome_column_tells_what_the_nodes_made_of_it(cluster: Cluster, operator_supervisor: OperatorSupervisor,
                                                            created: Create) -> None:
    operator_supervisor.ensure_running()
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "HealthCheck", "metadata": {"name": "outcome-edge"},
             "spec": {"checks": [{"name": "ssh", "type": "tcp", "tcp": {"port": 22}}]}})
    cluster.wait_condition("HealthCheck", "outcome-edge", "True")
    agent = reporter(cluster)
    assert agent.node_entry("healthchecks", "outcome-edge", {"phase": "Healthy", "observedGeneration": 1})
    try:
        cluster.wait_for(lambda: cluster.get("HealthCheck", "outcome-edge")["status"].get("outcome") == "1/3 healthy",
                         what="the HealthCheck's outcome")
        row = wide_row(cluster, "healthchecks", "outcome-edge")
        assert (row["READY"], row["OUTCOME"], row["HEALTHY"]) == ("True", "1/3 healthy", "1")
        narrow = cluster.kubectl("get", "healthchecks", "outcome-edge").stdout.splitlines()[0].split()
        assert "OUTCOME" in narrow and "HEALTHY" not in narrow, "the count the outcome sums up shows only wide"
        assert agent.node_entry("healthchecks", "outcome-edge", {"phase": "Unhealthy", "observedGeneration": 1})
        cluster.wait_for(lambda: wide_row(cluster, "healthchecks", "outcome-edge")["OUTCOME"]
                         == "0/3 healthy, 1 unhealthy", what="the outcome after the node turned unhealthy")
    finally:
        agent.node_entry("healthchecks", "outcome-edge", None)
