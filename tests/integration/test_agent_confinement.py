"""The chart's ServiceAccounts on the real API server. The agent's: RBAC lets it read the kinds, create
NodeReports and patch their status, and patch Nodes; the ValidatingAdmissionPolicies narrow that to its own
node's NodeReport and Node, and on that Node to the keys the agent owns (api/nodekeys.py). Most requests
impersonate node macula-nuc-01's agent with the user extra authentication.kubernetes.io/node-name; the
confinement to its own keys is tried with a real token bound to an agent pod on that node, which carries
the extra by itself. The operator's: it runs, as a process, on nothing but a token of its ServiceAccount.

The release goes to its own namespace so its operator's Lease is not the one the session's operator holds."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes import config as kube_config

from maculaos.agent.nodereport import Reporter
from maculaos.api import GROUP, VERSION
from maculaos.api.backup import BACKUP_SERVER_ANNOTATION
from maculaos.api.common import DEFAULT_NAMESPACE, VERSION_LABEL
from maculaos.api.decommission import GRANTED_ANNOTATION, RESET_ANNOTATION
from maculaos.api.nodekeys import AGENT_ANNOTATIONS, AGENT_CONDITIONS, AGENT_LABELS, MESH_LABELS_ANNOTATION
from maculaos.controller.nodeupgrade import CORDON_ANNOTATION
from maculaos.devenv.demo import start_operator
from maculaos.devenv.processes import stop
from maculaos.kube.rest import MERGE_PATCH, ApiError, Credentials, KubeClient, resource_path
from tests.integration.lookup import fetching_lookup

from .conftest import REPO, Cluster, kube_of

RELEASE = "maculaos"
NS = "maculaos-rbac-test"
AGENT = f"system:serviceaccount:{NS}:{RELEASE}-agent"
OPERATOR = f"system:serviceaccount:{NS}:{RELEASE}-operator"
ME, OTHER = "macula-nuc-01", "macula-nuc-02"
ROLE = "confinement-test"


def helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(cluster.plane.bin_dir / "helm"), f"--kubeconfig={cluster.plane.kubeconfig}", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"helm {' '.join(args)} failed: {result.stderr}"
    return result


def as_agent(node: str | None = ME) -> list[str]:
    """kubectl flags that impersonate the agent of node (None: a token that names no node)."""
    extra = [] if node is None else [f"--as-user-extra=authentication.kubernetes.io/node-name={node}"]
    return [f"--as={AGENT}", "--as-group=system:serviceaccounts", *extra]


def agent_client(cluster: Cluster, node: str | None = ME) -> client.ApiClient:
    """A Python client that is node's agent, as the agent's own calls are made (merge patches, no reads
    first: kubectl would GET before patching, which the agent never does and may not)."""
    api: client.ApiClient = kube_config.new_client_from_config(str(cluster.plane.kubeconfig))
    api.set_default_header("Impersonate-User", AGENT)
    api.set_default_header("Impersonate-Group", "system:serviceaccounts")
    if node is not None:  # the header name carries the extra's key, with its slash percent-encoded
        api.set_default_header("Impersonate-Extra-authentication.kubernetes.io%2fnode-name", node)
    return api


@pytest.fixture(scope="module")
def chart(cluster: Cluster) -> Iterator[None]:
    """The operator chart installed on the shared control plane (its pods stay Pending: no kubelet)."""
    helm(cluster, "install", RELEASE, str(REPO / "charts" / "maculaos-operator"), f"--namespace={NS}",
         "--create-namespace")
    cluster.wait_for(lambda: _has_bindings(cluster), what="the policy bindings")
    # A binding that exists is not yet enforced: the API server loads policies from its own informer, a
    # second or more later on a loaded machine. Wait until a request the policy denies is denied (dry run).
    cluster.wait_for(lambda: _denied_dry_run(cluster), timeout=60, what="the admission policies to be enforced")
    try:
        yield
    finally:
        helm(cluster, "uninstall", RELEASE, f"--namespace={NS}")
        # The scheduler bound the chart's pods to simulated nodes, whose missing kubelet never confirms a
        # deletion: left Terminating, they would hold every later drain of those nodes (the rollout tests).
        cluster.kubectl("delete", "pods", "--all", f"--namespace={NS}", "--grace-period=0", "--force")
        cluster.kubectl("delete", "namespace", NS, "--wait=false")


def _has_bindings(cluster: Cluster) -> bool:
    names = cluster.kubectl("get", "validatingadmissionpolicybinding", "-o", "name").stdout
    return "agent-own-report" in names and "agent-own-node" in names


def _denied_dry_run(cluster: Cluster) -> bool:
    """Whether the API server refuses node ME's agent a NodeReport of another node (nothing is created)."""
    try:
        client.CustomObjectsApi(agent_client(cluster)).create_cluster_custom_object(
            GROUP, VERSION, "nodereports", new_report(OTHER, OTHER), dry_run="All")
    except client.ApiException as exc:
        return f"may only write NodeReport {ME}" in str(exc.body)
    return False


@pytest.fixture
def meshrole(cluster: Cluster, chart: None) -> Iterator[str]:
    """A MeshRole, and node ME without a NodeReport yet (earlier tests' agents may have left one)."""
    cluster.apply({"apiVersion": "os.macula.io/v1alpha1", "kind": "MeshRole", "metadata": {"name": ROLE},
                   "spec": {"nodeSelector": {"matchLabels": {"site": "nowhere"}}, "roles": ["bootstrap"]}})
    cluster.kubectl("delete", "nodereport", ME, "--ignore-not-found")
    try:
        yield ROLE
    finally:
        cluster.kubectl("delete", "meshrole", ROLE, "--ignore-not-found")


def reporter(cluster: Cluster, api: client.ApiClient, node: str) -> Reporter:
    """The agent's own writer; the lookup (the agent's watch caches) is played by the test's client."""
    return Reporter(kube_of(api), node, fetching_lookup(kube_of(cluster.api)))


def report_of(cluster: Cluster, node: str) -> dict[str, object]:
    return cluster.get("nodereport", node)


def test_the_agent_writes_its_own_report(cluster: Cluster, meshrole: str) -> None:
    mine = reporter(cluster, agent_client(cluster), ME)
    assert mine.node_entry("meshroles", ROLE, {"phase": "Failed", "message": "nft refused"})
    report = cluster.get("nodereport", ME)
    node = cluster.get("node", ME)
    assert report["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": ME, "uid": node["metadata"]["uid"]}]
    entry = report["status"]["entries"][f"MeshRole/{ROLE}"]
    assert entry["uid"] == cluster.get("meshrole", ROLE)["metadata"]["uid"]
    assert entry["report"]["phase"] == "Failed" and report["status"]["objects"] == 1
    assert mine.node_entry("meshroles", ROLE, None), "removing its own entry is allowed"
    assert f"MeshRole/{ROLE}" not in cluster.get("nodereport", ME)["status"].get("entries", {})


def as_agent_of(cluster: Cluster, node: str | None = ME) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(agent_client(cluster, node))


def refusal(call: Callable[[], object]) -> str:
    try:
        call()
    except client.ApiException as exc:
        return f"{exc.status} {exc.body}"
    raise AssertionError("the API server accepted it")


def new_report(name: str, owner: str | None) -> dict[str, object]:
    owners = [] if owner is None else [{"apiVersion": "v1", "kind": "Node", "name": owner, "uid": "x"}]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NodeReport",
            "metadata": {"name": name, **({"ownerReferences": owners} if owners else {})}}


ENTRY = {"status": {"entries": {f"MeshRole/{ROLE}": {"uid": "u", "report": {"phase": "Applied"}}}}}


def test_the_agent_cannot_write_another_nodes_report(cluster: Cluster, meshrole: str) -> None:
    """Each node's report is its agent's alone: another node's agent can neither create nor change it."""
    cluster.kubectl("delete", "nodereport", OTHER, "--ignore-not-found")
    custom = as_agent_of(cluster)
    words = f"may only write NodeReport {ME}, not {OTHER}"
    assert words in refusal(lambda: custom.create_cluster_custom_object(GROUP, VERSION, "nodereports",
                                                                        new_report(OTHER, OTHER)))
    assert reporter(cluster, agent_client(cluster, OTHER), OTHER).node_entry("meshroles", ROLE, {"phase": "Ok"})
    before = report_of(cluster, OTHER)
    refused = refusal(lambda: custom.patch_cluster_custom_object_status(
        GROUP, VERSION, "nodereports", OTHER, ENTRY, _content_type=MERGE_PATCH))
    assert refused.startswith("403") and "denied request" in refused and words in refused, refused
    assert report_of(cluster, OTHER) == before


@pytest.mark.parametrize("owner, words", [
    (None, "must be owned by Node macula-nuc-01"),
    (OTHER, "must be owned by Node macula-nuc-01"),
])
def test_the_agents_report_belongs_to_its_node(cluster: Cluster, meshrole: str, owner: str | None,
                                               words: str) -> None:
    """Owned by its Node, a NodeReport is garbage-collected with it; an agent cannot make one that is not."""
    refused = refusal(lambda: as_agent_of(cluster).create_cluster_custom_object(
        GROUP, VERSION, "nodereports", new_report(ME, owner)))
    assert refused.startswith("403") and words in refused, refused


def test_the_agent_changes_only_its_reports_status(cluster: Cluster, meshrole: str) -> None:
    """No metadata or spec changes, no delete, even of its own NodeReport (its Node's deletion removes it)."""
    assert reporter(cluster, agent_client(cluster), ME).node_entry("meshroles", ROLE, {"phase": "Applied"})
    custom = as_agent_of(cluster)
    relabel = refusal(lambda: custom.patch_cluster_custom_object(
        GROUP, VERSION, "nodereports", ME, {"metadata": {"labels": {"x": "y"}}}, _content_type=MERGE_PATCH))
    delete = refusal(lambda: custom.delete_cluster_custom_object(GROUP, VERSION, "nodereports", ME))
    assert relabel.startswith("403") and delete.startswith("403"), (relabel, delete)
    assert "x" not in (cluster.get("nodereport", ME)["metadata"].get("labels") or {})


def test_a_token_without_a_node_name_writes_nothing(cluster: Cluster, meshrole: str) -> None:
    refused = refusal(lambda: as_agent_of(cluster, None).create_cluster_custom_object(
        GROUP, VERSION, "nodereports", new_report(ME, ME)))
    assert "name no node" in refused, refused


def test_the_agent_labels_only_its_own_node(cluster: Cluster, chart: None) -> None:
    mine = reporter(cluster, agent_client(cluster), ME)
    assert mine.labels({"macula.io/role-gateway": "true"}, {})
    assert cluster.get("node", ME)["metadata"]["labels"]["macula.io/role-gateway"] == "true"
    core = client.CoreV1Api(agent_client(cluster))
    with pytest.raises(client.ApiException) as refused:
        core.patch_node(OTHER, {"metadata": {"labels": {"macula.io/role-gateway": "true"}}})
    assert refused.value.status == 403 and f"may only update its own Node, not {OTHER}" in str(refused.value.body)
    assert "macula.io/role-gateway" not in cluster.get("node", OTHER)["metadata"].get("labels", {})
    cluster.kubectl("label", "node", ME, "macula.io/role-gateway-")


def test_the_agent_sets_conditions_only_on_its_own_node(cluster: Cluster, chart: None) -> None:
    assert reporter(cluster, agent_client(cluster), ME).condition("MaculaHealthy", "True", "ChecksPass", "ok")
    assert not reporter(cluster, agent_client(cluster), OTHER).condition("MaculaHealthy", "False", "Lie", "spoofed"), \
        "node macula-nuc-01's agent pretending to report for macula-nuc-02 is refused"
    conditions = cluster.get("node", OTHER)["status"].get("conditions", [])
    assert not any(c["type"] == "MaculaHealthy" and c["reason"] == "Lie" for c in conditions)


@pytest.mark.parametrize("verb", [
    ["get", "secrets", "-n", "kube-system"],
    ["get", "secrets", "-n", NS],  # a list: the agent may only get Secrets by name
    ["delete", "meshrole", ROLE],
    ["patch", "meshrole", ROLE, "--type=merge", "-p", '{"spec":{"roles":[]}}'],
    ["patch", "meshrole", ROLE, "--subresource=status", "--type=merge", "-p", '{"status":{"nodes":{}}}'],
    ["delete", "nodereport", ME],
    ["create", "configmap", "x", "-n", NS],
    ["delete", "node", OTHER],
    ["get", "leases", "-n", NS],
])
def test_rbac_refuses_the_agent_everything_else(cluster: Cluster, meshrole: str, verb: list[str]) -> None:
    result = cluster.kubectl(*verb, *as_agent(), check=False)
    assert result.returncode != 0 and "forbidden" in result.stderr.lower(), result.stderr


@pytest.mark.parametrize("verb, allowed", [
    (["auth", "can-i", "get", "secrets", "-n", NS], True),
    (["auth", "can-i", "get", "secrets", "-n", "kube-system"], False),
    (["auth", "can-i", "get", "secrets", "-n", DEFAULT_NAMESPACE], False),
    (["auth", "can-i", "list", "secrets", "-n", NS], False),
    (["auth", "can-i", "patch", "meshroles.os.macula.io/status"], True),
    (["auth", "can-i", "patch", "meshroles.os.macula.io"], True),
    (["auth", "can-i", "delete", "meshroles.os.macula.io"], False),
    (["auth", "can-i", "watch", "nodereports.os.macula.io"], True),
    (["auth", "can-i", "patch", "nodereports.os.macula.io/status"], False),
    (["auth", "can-i", "update", "leases", "-n", NS], True),
    (["auth", "can-i", "update", "leases", "-n", "kube-system"], False),
    (["auth", "can-i", "patch", "nodes"], True),
    (["auth", "can-i", "delete", "nodes"], True),  # a decommissioned node's Node object
    (["auth", "can-i", "create", "pods", "--subresource=eviction", "-n", "default"], True),
    (["auth", "can-i", "delete", "pods", "-n", "default"], True),
    (["auth", "can-i", "create", "pods", "-n", "default"], False),
    (["auth", "can-i", "create", "events", "-n", "default"], True),
])
def test_the_operator_has_what_it_calls_and_no_more(cluster: Cluster, chart: None, verb: list[str],
                                                    allowed: bool) -> None:
    result = cluster.kubectl(*verb, f"--as={OPERATOR}", check=False)
    assert result.stdout.strip() == ("yes" if allowed else "no"), (verb, result.stdout, result.stderr)


def test_the_policy_type_checks(cluster: Cluster, chart: None) -> None:
    """The API server compiles and type-checks the CEL; warnings here would mean a rule that never holds."""
    for name in (f"{RELEASE}-agent-own-report", f"{RELEASE}-agent-own-node"):
        cluster.wait_for(lambda name=name: "typeChecking" in cluster.get("validatingadmissionpolicy", name)
                         .get("status", {}),
                         what=f"type checking of {name}")
        checking = cluster.get("validatingadmissionpolicy", name)["status"]["typeChecking"]
        assert not checking.get("expressionWarnings"), checking


def token_kubeconfig(cluster: Cluster, directory: Path, account: str, pod: str | None = None) -> Path:
    """A kubeconfig holding a real token of the ServiceAccount (TokenRequest), bound to pod if given, as
    the kubelet mounts into that pod."""
    bound = [] if pod is None else ["--bound-object-kind=Pod", f"--bound-object-name={pod}"]
    token = cluster.kubectl("create", "token", account, f"--namespace={NS}", "--duration=1h", *bound).stdout.strip()
    config = yaml.safe_load(cluster.plane.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = account
    path = directory / f"{account}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def agent_pod(cluster: Cluster, chart: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The agent's pod on node ME (assigned to the node, as the DaemonSet controller does; without a
    kubelet it never starts) and a kubeconfig with a real token bound to it, as the kubelet mounts it."""
    pod = f"agent-{ME}"
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": NS},
                   "spec": {"nodeName": ME, "serviceAccountName": f"{RELEASE}-agent",
                            "containers": [{"name": "agent", "image": "ghcr.io/macula-io/maculaos-operator:0.1.0"}]}})
    try:
        yield token_kubeconfig(cluster, tmp_path_factory.mktemp("agent-pod"), f"{RELEASE}-agent", pod)
    finally:
        cluster.kubectl("delete", "pod", pod, f"--namespace={NS}", "--grace-period=0", "--force", check=False)


def test_a_bound_token_of_a_pod_on_the_node_carries_its_name(cluster: Cluster, meshrole: str, agent_pod: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No impersonation: the agent pod's own token is what the policy reads. The agent's client finds it
    as in a pod: the service account folder and KUBERNETES_SERVICE_HOST/PORT."""
    api = kube_config.new_client_from_config(str(agent_pod))
    review = client.AuthenticationV1Api(api).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    user = review.status.user_info
    assert user is not None and (user.extra or {}).get("authentication.kubernetes.io/node-name") == [ME], user
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(yaml.safe_load(agent_pod.read_text())["users"][0]["user"]["token"])
    (account / "ca.crt").write_bytes((cluster.plane.pki.directory / "ca.crt").read_bytes())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(cluster.plane.api_port))
    in_pod = Credentials.in_cluster(account)
    assert in_pod is not None
    kube, lookup = KubeClient(in_pod), fetching_lookup(kube_of(cluster.api))
    assert Reporter(kube, ME, lookup).node_entry("meshroles", ROLE, {"phase": "Applied", "message": "real token"})
    cluster.kubectl("delete", "nodereport", OTHER, "--ignore-not-found")
    assert not Reporter(kube, OTHER, lookup).node_entry("meshroles", ROLE, {"phase": "Failed"})
    assert cluster.get("nodereport", ME)["status"]["entries"][f"MeshRole/{ROLE}"]["report"]["message"] == \
        "real token"
    assert cluster.kubectl("get", "nodereport", OTHER, check=False).returncode != 0


# -- On its own Node, only the keys it owns (api/nodekeys.py) --------------------------------------------

TAINT = {"key": "maculaos.test/confinement", "value": "x", "effect": "NoSchedule"}


def _cordoned(cluster: Cluster) -> None:
    """The operator's doing, mid-upgrade: cordoned, with the annotation naming the NodeUpgrade."""
    cluster.kubectl("patch", "node", ME, "--type=merge", "-p", json.dumps(
        {"spec": {"unschedulable": True}, "metadata": {"annotations": {CORDON_ANNOTATION: "upgrade-1"}}}))


def _tainted(cluster: Cluster) -> None:
    cluster.kubectl("patch", "node", ME, "--type=merge", "-p", json.dumps({"spec": {"taints": [TAINT]}}))


def _mesh_labelled(cluster: Cluster) -> None:
    cluster.kubectl("patch", "node", ME, "--type=merge", "-p", json.dumps(
        {"metadata": {"labels": {"site": "lab"}, "annotations": {MESH_LABELS_ANNOTATION: "site"}}}))


def _restore(cluster: Cluster) -> None:
    """Node ME as the tests found it: uncordoned, untainted, without the test's keys."""
    cluster.kubectl("patch", "node", ME, "--type=merge", "-p", json.dumps({
        "spec": {"unschedulable": None, "taints": None},
        "metadata": {"labels": {"site": None, "node-role.kubernetes.io/control-plane": None},
                     "annotations": {CORDON_ANNOTATION: None, MESH_LABELS_ANNOTATION: None}}}))


#: (what a compromised agent tries, the admin's setup before it, the Node path patched, the patch, the words
#: of the refusal, what must hold afterwards).
REFUSED: dict[str, tuple[Callable[[Cluster], None] | None, str, dict[str, Any], str,
                         Callable[[dict[str, Any]], bool]]] = {
    "uncordon mid-upgrade": (_cordoned, "", {"spec": {"unschedulable": None}}, "may not change its Node's spec",
                             lambda node: node["spec"].get("unschedulable") is True),
    "cordon": (None, "", {"spec": {"unschedulable": True}}, "may not change its Node's spec",
               lambda node: not node["spec"].get("unschedulable")),
    "taint removal": (_tainted, "", {"spec": {"taints": None}}, "may not change its Node's spec",
                      lambda node: TAINT in node["spec"].get("taints", [])),
    "operator annotation forgery": (
        None, "", {"metadata": {"annotations": {CORDON_ANNOTATION: "upgrade-forged"}}},
        f"may only change its own annotations ({BACKUP_SERVER_ANNOTATION}, {RESET_ANNOTATION}), "
        f"not {CORDON_ANNOTATION}",
        lambda node: CORDON_ANNOTATION not in node["metadata"].get("annotations", {})),
    "granting itself a factory reset": (
        None, "", {"metadata": {"annotations": {GRANTED_ANNOTATION: "all"}}}, f"not {GRANTED_ANNOTATION}",
        lambda node: GRANTED_ANNOTATION not in node["metadata"].get("annotations", {})),
    "operator annotation removal": (
        _cordoned, "", {"metadata": {"annotations": {CORDON_ANNOTATION: None}}},
        f"not {CORDON_ANNOTATION}", lambda node: node["metadata"]["annotations"][CORDON_ANNOTATION] == "upgrade-1"),
    "foreign label": (None, "", {"metadata": {"labels": {"site": "attracts-workloads"}}}, "not site",
                      lambda node: "site" not in node["metadata"].get("labels", {})),
    "node-role label": (
        None, "", {"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}},
        "not node-role.kubernetes.io/control-plane",
        lambda node: "node-role.kubernetes.io/control-plane" not in node["metadata"].get("labels", {})),
    "a MeshRole's label, the operator's to write": (
        _mesh_labelled, "", {"metadata": {"labels": {"site": None}, "annotations": {MESH_LABELS_ANNOTATION: None}}},
        "not site", lambda node: node["metadata"]["labels"].get("site") == "lab"),
    "an owned key smuggling a foreign one": (
        None, "", {"metadata": {"labels": {VERSION_LABEL: "9.9.9", "site": "x"}}}, "not site",
        lambda node: node["metadata"]["labels"].get(VERSION_LABEL) != "9.9.9"),
    "finalizer": (None, "", {"metadata": {"finalizers": ["maculaos.test/never-goes"]}},
                  "may not change its Node's finalizers",
                  lambda node: not node["metadata"].get("finalizers")),
    "the kubelet's condition": (
        None, "/status", {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Forged"}]}},
        "may only change its own conditions (MaculaHealthy, MaculaBackupServer), not Ready",
        lambda node: not any(c.get("reason") == "Forged" for c in node["status"].get("conditions", []))),
    "the kubelet's addresses": (
        None, "/status", {"status": {"addresses": [{"type": "InternalIP", "address": "203.0.113.66"}]}},
        "may change only its own conditions in its Node's status, not addresses",
        lambda node: not any(a["address"] == "203.0.113.66" for a in node["status"].get("addresses", []))),
    "the kubelet's capacity": (
        None, "/status", {"status": {"capacity": {"pods": "1000"}, "nodeInfo": {"osImage": "Forged"}}},
        "may change only its own conditions in its Node's status, not ",
        lambda node: node["status"]["capacity"]["pods"] != "1000"
        and node["status"]["nodeInfo"]["osImage"] != "Forged"),
}


def node_patch(kubeconfig: Path, subresource: str, body: dict[str, Any]) -> None:
    """A merge patch of Node ME (or its status) as the agent's own client makes it."""
    KubeClient(Credentials.from_kubeconfig(kubeconfig)).request(
        "PATCH", resource_path("v1", "nodes", ME) + subresource, body, content_type=MERGE_PATCH)


@pytest.mark.parametrize("attempt", REFUSED)
def test_the_agent_changes_nothing_it_does_not_own_on_its_node(cluster: Cluster, agent_pod: Path, attempt: str) -> None:
    """With its pod's real bound token, the agent of node ME is refused (403) every change to its own Node
    outside its keys, and the Node is left as it was."""
    setup, subresource, body, words, unchanged = REFUSED[attempt]
    if setup is not None:
        setup(cluster)
    try:
        with pytest.raises(ApiError) as refused:
            node_patch(agent_pod, subresource, body)
        assert refused.value.status == 403 and words in str(refused.value), str(refused.value)
        assert unchanged(cluster.get("node", ME)), attempt
    finally:
        _restore(cluster)


def test_the_agent_changes_the_keys_it_owns_on_its_node(cluster: Cluster, agent_pod: Path) -> None:
    """Everything the agent writes on its Node, with its pod's real bound token: each label, its annotation
    and its conditions, set and removed (then given back the values they had)."""
    before = cluster.get("node", ME)["metadata"]
    had = {"labels": {k: (before.get("labels") or {}).get(k) for k in AGENT_LABELS},
           "annotations": {k: (before.get("annotations") or {}).get(k) for k in AGENT_ANNOTATIONS}}
    for key in sorted(AGENT_LABELS):
        node_patch(agent_pod, "", {"metadata": {"labels": {key: "true" if "role" in key else "9.9.9"}}})
    for key in sorted(AGENT_ANNOTATIONS):
        node_patch(agent_pod, "", {"metadata": {"annotations": {key: "http://192.0.2.1:8000/"}}})
    kube = KubeClient(Credentials.from_kubeconfig(agent_pod))
    reporter = Reporter(kube, ME, fetching_lookup(kube_of(cluster.api)))
    for ctype in sorted(AGENT_CONDITIONS):
        assert reporter.condition(ctype, "True", "ConfinementTest", "owned")
    node = cluster.get("node", ME)
    assert AGENT_LABELS <= node["metadata"]["labels"].keys()
    assert AGENT_ANNOTATIONS <= node["metadata"]["annotations"].keys()
    assert AGENT_CONDITIONS <= {c["type"] for c in node["status"]["conditions"] if c["reason"] == "ConfinementTest"}
    node_patch(agent_pod, "", {"metadata": {"labels": dict.fromkeys(AGENT_LABELS),
                                            "annotations": dict.fromkeys(AGENT_ANNOTATIONS)}})
    node = cluster.get("node", ME)
    assert not AGENT_LABELS & node["metadata"].get("labels", {}).keys()
    assert not AGENT_ANNOTATIONS & node["metadata"].get("annotations", {}).keys()
    cluster.kubectl("patch", "node", ME, "--type=merge", "-p", json.dumps({"metadata": had}))


def test_the_operator_runs_on_its_service_accounts_rights(cluster: Cluster, chart: None, tmp_path: Path) -> None:
    """`maculaos operator run` with only its ServiceAccount's token: it wins its Lease, judges objects
    through kopf and resync passes, writes a MeshRole's nodeLabels on its Node, and is never refused
    (Backups of other tests name Secrets it may not read: those are judged, not crashed on)."""
    kubeconfig = token_kubeconfig(cluster, tmp_path, f"{RELEASE}-operator")
    record = start_operator(kubeconfig, tmp_path, resync_seconds=1, name="operator-rbac",
                            extra_args=(f"--namespace={NS}",))
    name = "rbac-operator-test"
    try:
        cluster.wait_for(lambda: cluster.kubectl("get", "lease", "maculaos-controller", f"--namespace={NS}",
                                                 check=False).returncode == 0, 60, "the operator's Lease")
        cluster.apply({"apiVersion": "os.macula.io/v1alpha1", "kind": "MeshRole", "metadata": {"name": name},
                       "spec": {"nodeSelector": {"matchLabels": {"kubernetes.io/hostname": ME}}, "roles": ["bootstrap"],
                                "nodeLabels": {"macula.io/rbac-test": "yes"}}})
        cluster.wait_for(lambda: cluster.get("meshrole", name).get("status", {}).get("conditions") is not None,
                         30, "the MeshRole judged")
        cluster.wait_for(lambda: cluster.get("node", ME)["metadata"]["labels"].get("macula.io/rbac-test") == "yes",
                         30, "the MeshRole's nodeLabels written by the operator")
        log = Path(record.log)
        time.sleep(3)  # a few resync passes (one a second) over every object in the cluster
        text = log.read_text()
        for refusal in ("Forbidden", "forbidden", " 403", "resync pass failed", "Traceback"):
            assert refusal not in text, f"{refusal!r} in the operator's log:\n{text[-3000:]}"
        assert "is the leader" in text
    finally:
        cluster.kubectl("delete", "meshrole", name, "--ignore-not-found")
        stop(record)
        cluster.kubectl("label", "node", ME, "macula.io/rbac-test-")
        cluster.kubectl("annotate", "node", ME, f"{MESH_LABELS_ANNOTATION}-")

