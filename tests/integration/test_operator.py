"""The operator against the real control plane: conditions and Events for valid and invalid objects,
and an Invalid object healing by itself once the cluster catches up."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from maculaos.api import KINDS
from maculaos.api.nodekeys import MESH_LABELS_ANNOTATION
from maculaos.controller.fold import REPORTS, Folder
from maculaos.controller.handlers import resync_all
from maculaos.controller.nodeupgrade import Rollouts
from maculaos.devenv.processes import ProcessRecord
from maculaos.kube.rest import ApiError, KubeClient, object_path
from tests.integration.conftest import REPO, Cluster, kube_of

Create = Callable[[dict[str, Any]], dict[str, Any]]


def obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "maculaos-system"},
            "stringData": data}


def backup(name: str, **spec: Any) -> dict[str, Any]:
    return obj("Backup", name, {"target": {"local": {"path": "/backups"}},
                                "repositoryPasswordSecretRef": {"name": f"{name}-repo", "key": "password"}, **spec})


def events_for(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    listing = json.loads(cluster.kubectl("get", "events", "-n", "default", "-o", "json",
                                         f"--field-selector=involvedObject.name={name}").stdout)
    return list(listing["items"])


def test_examples_become_ready_with_summary_columns(cluster: Cluster, operator: ProcessRecord) -> None:
    cluster.kubectl("apply", "-f", str(REPO / "examples"))
    try:
        for kind, name in [("MeshRole", "warehouse-gateways"), ("NodeUpgrade", "to-0-2-0"), ("Backup", "nightly"),
                           ("Restore", "nuc-02-config-preview"), ("HealthCheck", "edge-basics")]:
            ready = cluster.wait_condition(kind, name, "True")
            assert ready["reason"] == "Accepted"
            status = cluster.get(kind, name)["status"]
            assert status["observedGeneration"] == 1
            assert cluster.condition(kind, name, "Invalid")["status"] == "False"
        assert cluster.get("MeshRole", "warehouse-gateways")["status"]["effectiveRoles"] == "peer,gateway"
        assert cluster.get("MeshRole", "warehouse-gateways")["status"]["matchedNodes"] == 2
        table = cluster.kubectl("get", "maculaos").stdout
        assert "warehouse-gateways" in table and "peer,gateway" in table and "Accepted" in table
        assert any(e["reason"] == "Accepted" for e in events_for(cluster, "nightly"))
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "-f", str(REPO / "examples"))


# (id, objects to create first, the object judged, field named, reason)
OPERATOR_INVALID = [
    ("selector-matches-no-node", [],
     obj("HealthCheck", "no-node", {"nodeSelector": {"matchLabels": {"macula.io/site": "moon"}},
                                    "checks": [{"name": "ssh", "type": "tcp", "tcp": {"port": 22}}]}),
     "spec.nodeSelector", "NoMatchingNodes"),
    ("downgrade-without-allow", [], obj("NodeUpgrade", "downgrade", {"version": "0.0.9"}), "spec.version",
     "Downgrade"),
    ("window-time-zone", [], obj("NodeUpgrade", "bad-zone", {"version": "0.2.0", "maintenanceWindows": [
        {"start": "01:00", "end": "05:00", "timeZone": "Europe/Atlantis"}]}),
     "spec.maintenanceWindows[0].timeZone", "InvalidSpec"),
    ("backup-secret-missing", [], backup("no-secret"), "spec.repositoryPasswordSecretRef.name", "SecretNotFound"),
    ("backup-secret-key-missing", [secret("key-missing-repo", passwd="x")], backup("key-missing"),
     "spec.repositoryPasswordSecretRef.key", "SecretKeyNotFound"),
    ("backup-cron", [secret("bad-cron-repo", password="x")], backup("bad-cron", schedule="61 * * * *"),
     "spec.schedule", "InvalidSpec"),
    ("backup-time-zone", [secret("bad-tz-repo", password="x")], backup("bad-tz", timeZone="Mars/Base"),
     "spec.timeZone", "InvalidSpec"),
    ("backup-mesh-too-few-peers", [secret("mesh-repo", password="x")],
     backup("mesh", target={"mesh": {"replicationFactor": 3}}), "spec.target.mesh.replicationFactor",
     "NotEnoughPeers"),
    ("restore-backup-missing", [], obj("Restore", "orphan", {"backupName": "nope", "nodeName": "macula-nuc-01",
                                                            "snapshot": {"latest": True}}),
     "spec.backupName", "BackupNotFound"),
    ("meshrole-realm-conflict", [obj("MeshRole", "realm-a", {"realm": "io.macula"})],
     obj("MeshRole", "realm-b", {"realm": "com.example"}), "spec.realm", "Conflict"),
]


@pytest.mark.parametrize(("setup", "bad", "field", "reason"), [c[1:] for c in OPERATOR_INVALID],
                         ids=[c[0] for c in OPERATOR_INVALID])
def test_operator_marks_invalid_naming_the_field(cluster: Cluster, operator: ProcessRecord, created: Create,
                                                 setup: list[dict[str, Any]], bad: dict[str, Any], field: str,
                                                 reason: str) -> None:
    for item in setup:
        created(item)
    created(bad)
    name = bad["metadata"]["name"]
    invalid = cluster.wait_condition(bad["kind"], name, "True", ctype="Invalid")
    assert invalid["reason"] == reason
    assert field in invalid["message"]
    ready = cluster.condition(bad["kind"], name)
    assert ready["status"] == "False" and ready["message"] == invalid["message"]
    cluster.wait_for(lambda: any(e["type"] == "Warning" and e["reason"] == reason
                                 for e in events_for(cluster, name)), what=f"a Warning event on {name}")


def test_invalid_heals_when_the_secret_appears(cluster: Cluster, operator: ProcessRecord, created: Create) -> None:
    """Level-triggered: nothing touches the Backup, the resync notices the new Secret."""
    created(backup("late-secret"))
    cluster.wait_condition("Backup", "late-secret", "True", ctype="Invalid")
    created(secret("late-secret-repo", password="s3cret"))
    ready = cluster.wait_condition("Backup", "late-secret", "True", timeout=20)
    assert ready["reason"] == "Accepted"


def test_fixing_the_spec_clears_invalid_and_tracks_generation(cluster: Cluster, operator: ProcessRecord,
                                                              created: Create) -> None:
    bad = created(obj("NodeUpgrade", "fix-me", {"version": "0.0.1"}))
    cluster.wait_condition("NodeUpgrade", "fix-me", "True", ctype="Invalid")
    bad["spec"]["version"] = "0.3.0"
    cluster.apply(bad)
    cluster.wait_condition("NodeUpgrade", "fix-me", "False", ctype="Invalid")
    status = cluster.get("NodeUpgrade", "fix-me")["status"]
    assert status["observedGeneration"] == 2 and status["targetVersion"] == "0.3.0"


def test_objects_carry_no_finalizer(cluster: Cluster, operator: ProcessRecord,
                                                                   created: Create) -> None:
    """A finalizer would keep users' objects from being deleted while the operator is away."""
    created(obj("MeshRole", "deletable", {}))
    cluster.wait_condition("MeshRole", "deletable", "True")
    assert not cluster.get("MeshRole", "deletable")["metadata"].get("finalizers")


def test_lockout_risks_are_accepted_with_a_warning_condition_and_event(
        cluster: Cluster, operator: ProcessRecord, created: Create) -> None:
    """A MeshRole that closes SSH on every node and a HealthCheck restarting dbus are accepted (Ready) and
    marked Warning, with a Warning Event naming the risk; a harmless one says NoKnownRisk."""
    created(obj("MeshRole", "no-ssh", {"bootstrapPeers": ["https://boot.example.org:443"],
                                       "firewall": {"allowSSH": False}}))
    created(obj("HealthCheck", "restarts-dbus", {"checks": [
        {"name": "bus", "type": "tcp", "tcp": {"port": 9}, "restartOnFailure": True, "restartUnit": "dbus.service"}]}))
    created(obj("HealthCheck", "harmless", {"checks": [{"name": "web", "type": "tcp", "tcp": {"port": 80}}]}))
    for kind, name, reason, field in (("MeshRole", "no-ssh", "SSHLockout", "spec.firewall.allowSSH"),
                                      ("HealthCheck", "restarts-dbus", "EssentialUnitRestart",
                                       "spec.checks[0].restartUnit")):
        warning = cluster.wait_condition(kind, name, "True", ctype="Warning")
        assert warning["reason"] == reason and warning["message"].startswith(field), warning
        assert cluster.condition(kind, name)["status"] == "True", "accepted all the same"
        cluster.wait_for(lambda n=name, r=reason: any(e["type"] == "Warning" and e["reason"] == r
                                                      for e in events_for(cluster, n)),
                         what=f"a Warning Event {reason} on {name}")
    assert cluster.wait_condition("HealthCheck", "harmless", "False", ctype="Warning")["reason"] == "NoKnownRisk"


def test_the_operator_writes_the_meshroles_node_labels(cluster: Cluster, operator: ProcessRecord,
                                                       created: Create) -> None:
    """nodeLabels are the operator's to write (an agent may change only its own keys on its Node): set on
    the selected Node, changed with the MeshRole, and removed when it goes, while a label someone else set
    on the Node stays."""
    node = "macula-pi-03"
    pi = {"matchLabels": {"kubernetes.io/hostname": node}}

    def labels() -> dict[str, str]:
        return dict(cluster.get("node", node)["metadata"].get("labels") or {})

    cluster.kubectl("label", "node", node, "macula.io/owner=ops", "--overwrite")
    try:
        role = created(obj("MeshRole", "labelled", {"nodeSelector": pi, "nodeLabels": {"macula.io/zone": "till"}}))
        cluster.wait_for(lambda: labels().get("macula.io/zone") == "till", what="the nodeLabel set")
        assert "macula.io/zone" not in cluster.get("node", "macula-nuc-01")["metadata"]["labels"]
        role["spec"]["nodeLabels"] = {"macula.io/zone": "stock", "macula.io/tier": "edge"}
        cluster.apply(role)
        cluster.wait_for(lambda: labels().get("macula.io/zone") == "stock" and labels().get("macula.io/tier") == "edge",
                         what="the nodeLabels changed")
        cluster.delete(role)
        cluster.wait_for(lambda: not {"macula.io/zone", "macula.io/tier"} & labels().keys(),
                         what="the nodeLabels removed with the MeshRole")
        assert labels()["macula.io/owner"] == "ops"
        assert MESH_LABELS_ANNOTATION not in (cluster.get("node", node)["metadata"].get("annotations") or {})
    finally:
        cluster.kubectl("label", "node", node, "macula.io/owner-", "macula.io/zone-", "macula.io/tier-")


class RecordingClient(KubeClient):
    """The controller's client, noting each request's method and path (the query left off)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append((method, path))
        return super().request(method, path, *args, **kwargs)


def test_a_resync_lists_each_kind_once(cluster: Cluster, no_operator: None, created: Create) -> None:
    """The resync folds the NodeReports and then judges every object from the listings the fold made (an
    object it wrote as the API server returned it), and the cluster snapshot takes its MeshRoles from them:
    one listing of each kind a pass, not two (three for MeshRoles). Objects are still judged and written."""
    created(obj("MeshRole", "resynced", {}))
    created(obj("HealthCheck", "resynced", {"checks": [{"name": "web", "type": "tcp", "tcp": {"port": 80}}]}))
    kube = kube_of(cluster.api, RecordingClient)
    assert isinstance(kube, RecordingClient)
    collections = ["nodes", REPORTS, *(m.resource.plural for m in KINDS)]

    def listable() -> bool:  # a fresh API server answers 429 while it initialises a kind's storage
        try:
            return all(isinstance(kube.items(object_path(c)), list) for c in collections[1:])
        except ApiError:
            return False

    cluster.wait_for(listable, what="every kind listable")
    kube.calls.clear()
    resync_all(kube, Rollouts(kube), Folder(kube))
    lists = [path.rsplit("/", 1)[1] for method, path in kube.calls if method == "GET" and path.endswith(
        tuple(f"/{c}" for c in collections))]
    assert sorted(lists) == sorted(collections), kube.calls
    assert cluster.condition("MeshRole", "resynced")["status"] == "True"
    assert cluster.condition("HealthCheck", "resynced")["status"] == "True"
