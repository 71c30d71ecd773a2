"""The charts and the kustomize manifests against a real API server of their own (the shared one has the
CRDs installed without Helm, which a Helm release could not adopt): lint, values rejected by the schema,
templates with varied values accepted by a server-side dry run, the kustomize output applied, and a Helm
install, an upgrade that changes a CRD, and an uninstall that keeps the CRDs and users' objects.
No `--wait` anywhere: without a kubelet pods stay Pending."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from maculaos.api import CRD_KINDS
from maculaos.devenv.controlplane import ControlPlane
from maculaos.devenv.manifests import KUBE_VERSION

from .conftest import REPO

OPERATOR_CHART = REPO / "charts" / "maculaos-operator"
CRDS_CHART = REPO / "charts" / "maculaos-crds"
NAMESPACE = "maculaos-system"


class Tools:
    """helm and kubectl against one private control plane."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def _run(self, tool: str, args: tuple[str, ...], stdin: str | None,
             check: bool) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.plane.bin_dir / tool), f"--kubeconfig={self.plane.kubeconfig}", *args],
                                input=stdin, capture_output=True, text=True, timeout=180)
        if check and result.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed:\n{result.stderr}")
        return result

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, None, check)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", args, stdin, check)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def exists(self, *args: str) -> bool:
        return self.kubectl("get", *args, check=False).returncode == 0


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory, bin_dir: Path) -> Iterator[Tools]:
    plane = ControlPlane(tmp_path_factory.mktemp("chart-controlplane"), bin_dir)
    plane.start()
    try:
        yield Tools(plane)
    finally:
        plane.stop()


def template(tools: Tools, chart: Path, *values: str) -> subprocess.CompletedProcess[str]:
    return tools.helm("template", "maculaos", str(chart), f"--namespace={NAMESPACE}",
                      f"--kube-version={KUBE_VERSION}", *values, check=False)


def test_charts_lint_strict(tools: Tools) -> None:
    for chart in (OPERATOR_CHART, CRDS_CHART):
        result = tools.helm("lint", "--strict", str(chart), f"--kube-version={KUBE_VERSION}", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    result = tools.helm("lint", "--strict", str(OPERATOR_CHART), f"--kube-version={KUBE_VERSION}",
                        "--set=agent.enabled=false,operator.replicas=1,operator.secretNamespaces={*}", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("value, words", [
    ("operator.replicas=0", "operator.replicas"),
    ("operator.replicas=two", "operator.replicas"),
    ("operator.leaseDurationSeconds=1", "operator.leaseDurationSeconds"),
    ("image.pullPolicy=Sometimes", "image.pullPolicy"),
    ("image.tag=not a tag", "image.tag"),
    ("agent.metricsPort=70000", "agent.metricsPort"),
    ("agent.restic=restic", "agent.restic"),
    ("agent.lanNeighboursSeconds=-1", "agent.lanNeighboursSeconds"),
    ("agent.lanNeighboursSeconds=often", "agent.lanNeighboursSeconds"),
    ("agent.nodeSelector.site=" + "x" * 64, "agent.nodeSelector.site"),
    ("operator.secretNamespaces={Bad_NS}", "operator.secretNamespaces"),
    ("operator.resources.requests.memory=lots", "operator.resources.requests.memory"),
    ("operator.replica=2", "operator"),
    ("operator.metricsPort=70000", "operator.metricsPort"),
    ("operator.livenessProbe.periodSeconds=0", "operator.livenessProbe.periodSeconds"),
    ("operator.startupProbe.failureThreshold=0", "operator.startupProbe.failureThreshold"),
    ("operator.readinessProbe.timeout=5", "operator.readinessProbe"),
    ("monitoring.serviceMonitor.interval=often", "monitoring.serviceMonitor.interval"),
    ("monitoring.prometheusRule.backupStaleSeconds=5", "monitoring.prometheusRule.backupStaleSeconds"),
    ("monitoring.prometheusRule.for=ten", "monitoring.prometheusRule.for"),
    ("monitoring.grafanaDashboard.labels.bad/key/x=1", "monitoring.grafanaDashboard.labels"),
    ("gitops.url=ftp://node/fleet.git", "gitops.url"),
    ("gitops.path=../other-site", "gitops.path"),
    ("gitops.path=sites/shop", "gitops.path"),
    ("gitops.branch=", "gitops.branch"),
    ("gitops.interval=hourly", "gitops.interval"),
    ("gitops.secretRef=Git_Creds", "gitops.secretRef"),
    ("gitops.namespace=", "gitops.namespace"),
])
def test_values_schema_rejects_bad_values(tools: Tools, value: str, words: str) -> None:
    result = template(tools, OPERATOR_CHART, f"--set={value}")
    assert result.returncode != 0 and "values don't meet the specifications of the schema" in result.stderr
    assert f"at '/{words.replace('.', '/')}" in result.stderr, result.stderr


def test_gitops_without_a_repository_says_which_value_is_missing(tools: Tools) -> None:
    result = template(tools, OPERATOR_CHART, "--set=gitops.enabled=true")
    assert result.returncode != 0 and "gitops.enabled needs gitops.url" in result.stderr, result.stderr


VARIANTS = {
    "defaults": [],
    "no-agent": ["--set=agent.enabled=false"],
    "no-policy": ["--set=admissionPolicy.enabled=false"],
    "one-replica": ["--set=operator.replicas=1,podDisruptionBudget.enabled=false"],
    "every-node": ["--set-json=agent.nodeSelector={}", "--set=agent.metricsPort=0"],
    "secrets-anywhere": ["--set=operator.secretNamespaces={*}"],
    "secrets-listed": ["--set=operator.secretNamespaces={backups,maculaos-system}"],
    "no-metrics": ["--set=operator.metricsPort=0"],
    "probes-tuned": ["--set=operator.metricsPort=19751,operator.livenessProbe.periodSeconds=60",
                     "--set=operator.readinessProbe.failureThreshold=10"],
    "pinned-image": ["--set=image.repository=registry.local:5000/maculaos,image.tag=0.1.0@sha256:" + "a" * 64,
                     "--set=image.pullPolicy=Never,operator.priorityClassName=system-cluster-critical"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_templates_pass_a_server_side_dry_run(tools: Tools, variant: str) -> None:
    for namespace in (NAMESPACE, "backups"):
        if not tools.exists("namespace", namespace):
            tools.kubectl("create", "namespace", namespace)
    rendered = template(tools, OPERATOR_CHART, *VARIANTS[variant])
    assert rendered.returncode == 0, rendered.stderr
    applied = tools.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered.stdout, check=False)
    assert applied.returncode == 0, applied.stderr
    assert "created (server dry run)" in applied.stdout


def test_variants_render_what_they_say() -> None:
    """A few of the variants, read back: what each value is for."""
    kinds = rendered
    default = kinds()
    agent = default["DaemonSet"][0]["spec"]["template"]["spec"]
    assert agent["hostPID"] and agent["priorityClassName"] == "system-node-critical"
    assert agent["tolerations"] == [{"operator": "Exists"}]
    assert agent["nodeSelector"] == {"os.macula.io/maculaos": "true"}
    assert agent["containers"][0]["securityContext"]["privileged"] is True
    assert agent["hostNetwork"] and "--lan-neighbours-seconds=300" in agent["containers"][0]["args"]  # the LAN seen
    # A slow node just rebooted gets 5 minutes to start each before liveness may kill it.
    operator = default["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
    for container in (agent["containers"][0], operator):
        probe = container["startupProbe"]
        assert probe["httpGet"]["path"] == "/healthz" and probe["periodSeconds"] * probe["failureThreshold"] == 300
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in \
        agent["containers"][0]["env"]
    args = agent["containers"][0]["args"]
    assert {"--host-root=/host", "--rauc=/usr/local/sbin/host-rauc",
            "--reboot-command=/usr/local/sbin/host-systemctl reboot"} <= set(args), \
        "the image has neither rauc nor systemctl: upgrades use the host's, which see the host at /"
    operator = default["Deployment"][0]["spec"]
    assert operator["replicas"] == 2
    assert operator["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    operator_env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
                    for e in operator["template"]["spec"]["containers"][0]["env"] if "valueFrom" in e}
    assert operator_env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name",
                            "NODE_NAME": "spec.nodeName"}, "a NodeUpgrade must know the operator's own pod and node"
    assert [r["metadata"]["namespace"] for r in default["Role"] if "secrets" in r["metadata"]["name"]] == [NAMESPACE]
    no_agent = kinds("--set=agent.enabled=false")
    assert "DaemonSet" not in no_agent and "ValidatingAdmissionPolicy" not in no_agent
    anywhere = kinds("--set=operator.secretNamespaces={*}")
    assert not [r for r in anywhere["Role"] if "secrets" in r["metadata"]["name"]]
    assert any("secrets" in rule["resources"] for role in anywhere["ClusterRole"]
               for rule in role["rules"])


MONITORING = ["--set=monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true",
              "--set=monitoring.grafanaDashboard.enabled=true,monitoring.serviceMonitor.labels.release=prom"]


def rendered(*values: str) -> dict[str, list[Any]]:
    out = subprocess.run([str(REPO / ".tools" / "bin" / "helm"), "template", "maculaos", str(OPERATOR_CHART),
                          f"--namespace={NAMESPACE}", f"--kube-version={KUBE_VERSION}", *values],
                         capture_output=True, text=True, check=True).stdout
    found: dict[str, list[Any]] = {}
    for doc in yaml.safe_load_all(out):
        if doc:
            found.setdefault(doc["kind"], []).append(doc)
    return found


def test_operator_probes_and_metrics_port() -> None:
    container = rendered()["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=9751" in container["args"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9751, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    tuned = rendered(*VARIANTS["probes-tuned"])["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
    assert tuned["livenessProbe"]["periodSeconds"] == 60 and tuned["readinessProbe"]["failureThreshold"] == 10
    assert tuned["ports"][0]["containerPort"] == 19751
    off = rendered("--set=operator.metricsPort=0")["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=0" in off["args"] and not {"ports", "livenessProbe", "readinessProbe"} & set(off)


def test_monitoring_is_off_by_default_and_complete_when_on(tools: Tools) -> None:
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "Service"} & set(rendered())
    on = rendered(*MONITORING)
    service, monitor = on["Service"][0], on["ServiceMonitor"][0]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"] == on["Deployment"][0]["spec"]["selector"]["matchLabels"]
    agent = on["DaemonSet"][0]["spec"]["template"]
    assert on["PodMonitor"][0]["spec"]["selector"]["matchLabels"].items() <= agent["metadata"]["labels"].items()
    assert {"name": "metrics", "containerPort": 9750, "protocol": "TCP"} in agent["spec"]["containers"][0]["ports"]
    dashboard = on["ConfigMap"][0]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["maculaos-fleet.json"])["uid"] == "maculaos-fleet"
    # The Service and the ConfigMap through the real API server; the monitoring.coreos.com kinds go through it
    # against the Prometheus Operator's own CRDs in test_monitoring_objects_fit_the_prometheus_operator_crds.
    if not tools.exists("namespace", NAMESPACE):
        tools.kubectl("create", "namespace", NAMESPACE)
    plain = "---\n".join(yaml.safe_dump(doc) for doc in (service, dashboard))
    applied = tools.kubectl("apply", "--dry-run=server", "-f", "-", stdin=plain, check=False)
    assert applied.returncode == 0, applied.stderr


def prometheus_operator_crds() -> Path:
    """The Prometheus Operator's CRDs, from its module in Go's module cache at the version tools/versions.env
    pins (tools/install.sh downloads it)."""
    version = next(line.split("=", 1)[1] for line in (REPO / "tools" / "versions.env").read_text().splitlines()
                   if line.startswith("PROMETHEUS_OPERATOR_VERSION="))
    cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    crds = Path(cache) / f"github.com/prometheus-operator/prometheus-operator@{version}/example/prometheus-operator-crd"
    assert crds.is_dir(), f"{crds} is missing: run tools/install.sh"
    return crds


def test_monitoring_objects_fit_the_prometheus_operator_crds(tools: Tools) -> None:
    """The chart's ServiceMonitor, PodMonitor and PrometheusRule, applied server-side against the Prometheus
    Operator's CRDs, whose schemas the API server enforces: a field it does not know or a malformed value in
    the templates fails here, not in a user's cluster."""
    crds = prometheus_operator_crds()
    for plural in ("servicemonitors", "podmonitors", "prometheusrules"):
        tools.kubectl("apply", "--server-side", "-f", str(crds / f"monitoring.coreos.com_{plural}.yaml"))
    tools.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com",
                  "crd/podmonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com")
    if not tools.exists("namespace", NAMESPACE):
        tools.kubectl("create", "namespace", NAMESPACE)
    on = rendered(*MONITORING)
    monitors = [on["ServiceMonitor"][0], on["PodMonitor"][0], on["PrometheusRule"][0]]
    text = "---\n".join(yaml.safe_dump(doc) for doc in monitors)
    applied = tools.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=maculaos-test",
                            "-f", "-", stdin=text, check=False)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("serverside-applied") == 3, applied.stdout
    # One bad value: the schema is enforced, so the check above can fail.
    bad = json.loads(json.dumps(on["ServiceMonitor"][0]))
    bad["spec"]["endpoints"][0]["interval"] = "every 30 seconds"
    refused = tools.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(bad),
                            check=False)
    assert refused.returncode != 0 and "spec.endpoints[0].interval" in refused.stderr, refused.stderr


def test_alerts_and_dashboard_name_only_metrics_that_exist() -> None:
    """Every series an alert or a dashboard panel reads is one the operator or the agent exposes: renaming
    a metric without its queries fails here."""
    from tests.promql_names import PROMETHEUS_SERIES, defined_metrics, metric_names

    on = rendered(*MONITORING)
    alerts = {r["alert"]: r["expr"] for g in on["PrometheusRule"][0]["spec"]["groups"] for r in g["rules"]}
    assert {"MaculaOSBackupStale", "MaculaOSRolloutFailed", "MaculaOSRolloutPaused", "MaculaOSNodeUnhealthy",
            "MaculaOSAgentNotReporting"} <= set(alerts)
    dashboard = json.loads(on["ConfigMap"][0]["data"]["maculaos-fleet.json"])
    queries = {f"panel {p['title']!r} query {n}": t["expr"] for p in dashboard["panels"]
               for n, t in enumerate(p["targets"], 1)}   # every query of a panel, not its last one only
    assert len(queries) == sum(len(p["targets"]) for p in dashboard["panels"]) >= 10
    read = set().union(*map(metric_names, queries.values()))
    assert {"maculaos_node_os_version_info", "maculaos_nodeupgrade_nodes", "maculaos_operator_backup_age_seconds",
            "maculaos_operator_node_healthy"} <= read, "the fleet's versions, rollouts, backup age and health"
    known = defined_metrics() | PROMETHEUS_SERIES
    unknown = {where: sorted(metric_names(expr) - known) for where, expr in {**alerts, **queries}.items()
               if metric_names(expr) - known}
    assert not unknown, f"queries name metrics nobody defines: {unknown}"
    assert all(metric_names(expr) for expr in [*alerts.values(), *queries.values()]), "a query reads no metric"


def test_kustomize_manifests_are_current() -> None:
    from maculaos.cli import main

    assert main(["dev", "manifests", "--check"]) == 0, "deploy/kustomize is out of date: run `maculaos dev manifests`"


def test_kustomize_manifests_apply(tools: Tools) -> None:
    kustomize = str(REPO / "deploy" / "kustomize")
    dry = tools.kubectl("apply", "-k", kustomize, "--dry-run=server", check=False)
    assert dry.returncode == 0, dry.stderr
    try:
        applied = tools.kubectl("apply", "-k", kustomize)
        assert "customresourcedefinition.apiextensions.k8s.io/meshroles.os.macula.io created" in applied.stdout
        assert tools.get("deployment", "maculaos-operator", "-n", NAMESPACE)["spec"]["replicas"] == 2
        assert tools.exists("validatingadmissionpolicy", "maculaos-agent-own-report")
        again = tools.kubectl("apply", "-k", kustomize)  # GitOps re-applies the same files forever
        assert "created" not in again.stdout, again.stdout
        wait_served(tools)
    finally:
        tools.kubectl("delete", "-k", kustomize, "--ignore-not-found")
    assert not tools.exists("crd", "meshroles.os.macula.io")


def wait_established(tools: Tools, timeout: float = 60.0) -> None:
    """Every MaculaOS CRD is served (kubectl wait fails on a CRD whose status is not written yet)."""
    deadline = time.monotonic() + timeout
    while True:
        crds = tools.get("crd", "-l", "app.kubernetes.io/part-of=maculaos")["items"]
        served = [c for c in crds if any(k["type"] == "Established" and k["status"] == "True"
                                         for k in c.get("status", {}).get("conditions") or [])]
        if len(crds) == len(CRD_KINDS) and len(served) == len(CRD_KINDS):
            return
        assert time.monotonic() < deadline, \
            f"CRDs not established after {timeout:.0f}s: {len(served)} of {len(CRD_KINDS)}"
        time.sleep(0.5)


def wait_served(tools: Tools, timeout: float = 60.0) -> None:
    """Every MaculaOS kind lists: a CRD deleted while its storage still initialises stays Terminating for
    minutes (the API server's clean-up backs off after "storage is (re)initializing")."""
    wait_established(tools, timeout)
    deadline = time.monotonic() + timeout
    for kind in CRD_KINDS:
        while tools.kubectl("get", kind.resource.plural, "-A", check=False).returncode != 0:
            assert time.monotonic() < deadline, f"{kind.resource.plural} not served after {timeout:.0f}s"
            time.sleep(0.5)


def _crd_column_names(tools: Tools) -> list[str]:
    crd = tools.get("crd", "meshroles.os.macula.io")
    return [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]


def test_helm_install_upgrade_with_a_crd_change_and_uninstall(tools: Tools, tmp_path: Path) -> None:
    tools.helm("install", "maculaos-crds", str(CRDS_CHART))
    wait_established(tools)
    installed = tools.helm("install", "maculaos", str(OPERATOR_CHART), f"--namespace={NAMESPACE}",
                           "--create-namespace")
    assert "holds the Lease" in installed.stdout and "are not in this cluster" not in installed.stdout, \
        "NOTES.txt tells what to do next, and finds the CRDs"
    assert tools.get("deployment", "maculaos-operator", "-n", NAMESPACE)["spec"]["replicas"] == 2
    assert tools.exists("daemonset", "maculaos-agent", "-n", NAMESPACE)
    tools.kubectl("apply", "-f", str(REPO / "examples" / "meshrole.yaml"))

    # A new chart version whose MeshRole CRD has one more printer column: Helm must change the live CRD.
    changed = tmp_path / "maculaos-crds"
    shutil.copytree(CRDS_CHART, changed)
    crd_file = changed / "templates" / "os.macula.io_meshroles.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    crd["spec"]["versions"][0]["additionalPrinterColumns"].append(
        {"name": "Object-UID", "type": "string", "jsonPath": ".metadata.uid", "priority": 1})
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    chart = yaml.safe_load((changed / "Chart.yaml").read_text())
    (changed / "Chart.yaml").write_text(yaml.safe_dump({**chart, "version": "0.1.1"}))
    assert "Object-UID" not in _crd_column_names(tools)
    tools.helm("upgrade", "maculaos-crds", str(changed))
    assert "Object-UID" in _crd_column_names(tools)
    assert "OBJECT-UID" in tools.kubectl("get", "meshroles", "-o", "wide").stdout

    tools.helm("upgrade", "maculaos", str(OPERATOR_CHART), f"--namespace={NAMESPACE}", "--set=operator.replicas=3")
    assert tools.get("deployment", "maculaos-operator", "-n", NAMESPACE)["spec"]["replicas"] == 3

    tools.helm("uninstall", "maculaos", f"--namespace={NAMESPACE}")
    for kind, name in (("clusterrole", "maculaos-agent"), ("validatingadmissionpolicy", "maculaos-agent-own-node")):
        assert not tools.exists(kind, name), f"{kind} {name} outlived its release"
    assert not tools.exists("deployment", "maculaos-operator", "-n", NAMESPACE)
    uninstalled = tools.helm("uninstall", "maculaos-crds")
    assert "kept due to the resource policy" in uninstalled.stdout + uninstalled.stderr
    assert tools.exists("crd", "meshroles.os.macula.io"), "the CRDs are kept: deleting them would delete every object"
    assert tools.exists("meshroles", "--all-namespaces") and tools.kubectl("get", "meshroles", "-o", "name").stdout
