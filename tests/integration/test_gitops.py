"""GitOps from the node's git server: Flux's source-controller and kustomize-controller (built from their Go
modules by tools/install.sh) run as processes against the test control plane, as they would with a
kubeconfig, and read the fleet repository from the real git server (lighttpd and git http-backend, as the
node serves it). A pushed commit reaches the nodes through Flux, the operator and the agents; a bad commit
is reported by Flux's Kustomization and by the object, and the nodes keep their last good state; a Secret
committed encrypted with sops (age) reaches the cluster decrypted, and only there."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from maculaos.api.common import DEFAULT_NAMESPACE
from maculaos.devenv.controlplane import default_bin_dir
from maculaos.devenv.manifests import KUBE_VERSION
from maculaos.devenv.processes import ProcessRecord, free_port, spawn, stop, wait_for_port
from tests.gitserver import HAS_LIGHTTPD, Server, StartServer, git
from tests.integration.agent_fleet import Fleet, agent_fleet
from tests.integration.conftest import REPO, Cluster

pytestmark = pytest.mark.skipif(not HAS_LIGHTTPD, reason="lighttpd is not installed (tools/install.sh installs it)")

FLUX_NAMESPACE = "flux-system"
WAREHOUSE = {"matchLabels": {"macula.io/site": "warehouse"}}  # macula-nuc-01 and macula-nuc-02
SITE = "sites/warehouse"
AGE_SECRET = "sops-age"  # the node's age key, in Flux's namespace: the only place it is in clear
KUSTOMIZATION = "maculaos-site"  # the chart's name for it, with release name "maculaos"


@dataclass
class Flux:
    """The two controllers' processes, and where source-controller serves its artifacts."""

    records: list[ProcessRecord]
    artifacts: str

    def stop(self) -> None:
        for record in self.records:
            stop(record)


def start_flux(cluster: Cluster, bin_dir: Path, workdir: Path) -> Flux:
    """Both controllers with the test cluster's kubeconfig, all their ports on loopback, no leader
    election (one replica each). source-controller advertises its artifact server's own address: the
    in-cluster Service name that a Deployment would advertise does not resolve here."""
    missing = [name for name in ("source-controller", "kustomize-controller", "flux-crds")
               if not (bin_dir / name).exists()]
    if missing:
        pytest.fail(f"{bin_dir} has no {', '.join(missing)}: run tools/install.sh (the README's test command does)")
    cluster.kubectl("apply", "--server-side", "-f", str((bin_dir / "flux-crds").resolve()))  # kubectl reads no link
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/gitrepositories.source.toolkit.fluxcd.io", "crd/kustomizations.kustomize.toolkit.fluxcd.io")
    cluster.kubectl("create", "namespace", FLUX_NAMESPACE, check=False)
    env = {"KUBECONFIG": str(cluster.plane.kubeconfig), "RUNTIME_NAMESPACE": FLUX_NAMESPACE}
    def controller(name: str, *args: str) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
        return spawn(name, [str(bin_dir / name), "--enable-leader-election=false", "--log-encoding=console",
                            f"--metrics-addr=127.0.0.1:{free_port()}", f"--health-addr=127.0.0.1:{free_port()}",
                            *args], workdir / "logs", env=env)

    storage, artifacts = free_port(), workdir / "artifacts"
    artifacts.mkdir(parents=True)
    source, source_record = controller("source-controller", f"--storage-path={artifacts}",
                                       f"--storage-addr=127.0.0.1:{storage}", f"--storage-adv-addr=127.0.0.1:{storage}")
    kustomize, kustomize_record = controller("kustomize-controller")
    flux = Flux([source_record, kustomize_record], f"http://127.0.0.1:{storage}")
    try:
        wait_for_port(storage, 60, source)
        cluster.wait_for(lambda: "starting manager" in Path(kustomize_record.log).read_text().lower()
                         or kustomize.poll() is not None, timeout=60, what="kustomize-controller to start")
        assert kustomize.poll() is None, Path(kustomize_record.log).read_text()[-2000:]
    except BaseException:
        flux.stop()
        raise
    return flux


def meshrole(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": "MeshRole", "metadata": {"name": name}, "spec": spec}


class SiteRepository:
    """A person's clone of the fleet repository: edit the site's folder, commit, push to the node."""

    def __init__(self, server: Server, clone: Path) -> None:
        self.server, self.clone = server, clone
        git("clone", "-q", server.url, str(clone))

    def push(self, message: str, *objects: dict[str, Any], encrypted_for: str | None = None) -> str:
        """The site's folder becomes exactly objects; Secrets are encrypted with sops for the age recipient
        encrypted_for, as a person does before committing (only their data: the rest stays readable)."""
        folder = self.clone / SITE
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.yaml"):
            old.unlink()
        for obj in objects:
            path = folder / f"{obj['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(obj))
            if obj["kind"] == "Secret":
                assert encrypted_for, "a Secret is never committed in clear"
                subprocess.run([str(default_bin_dir() / "sops"), "encrypt", "--age", encrypted_for,
                                "--encrypted-regex", "^(data|stringData)$", "--in-place", str(path)], check=True)
        git("add", "-A", ".", cwd=self.clone)
        git("commit", "-q", "-m", message, cwd=self.clone)
        git("push", "-q", self.server.authed(), "HEAD:main", cwd=self.clone)
        return git("rev-parse", "HEAD", cwd=self.clone).stdout.strip()


@pytest.fixture(scope="module")
def fleet(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with agent_fleet(cluster, tmp_path_factory.mktemp("gitops-fleet")) as started:
        yield started


@pytest.fixture
def flux(cluster: Cluster, bin_dir: Path, tmp_path: Path) -> Iterator[Flux]:
    started = start_flux(cluster, bin_dir, tmp_path / "flux")
    try:
        yield started
    finally:
        started.stop()
        for record in started.records:
            print(Path(record.log).read_text()[-3000:])


def flux_objects(bin_dir: Path, url: str) -> list[dict[str, Any]]:
    """The chart's GitOps objects, as `helm install` creates them for a Flux the user runs: the fleet
    repository and a Kustomization for this site's folder. A short interval so the test does not wait."""
    rendered = subprocess.run(
        [str(bin_dir / "helm"), "template", "maculaos", str(REPO / "charts" / "maculaos-operator"),
         f"--kube-version={KUBE_VERSION}", "--show-only=templates/gitops.yaml",
         f"--set=gitops.enabled=true,gitops.url={url},gitops.path=./{SITE},gitops.interval=2s",
         f"--set=gitops.decryptionSecretRef={AGE_SECRET}"],
        check=True, capture_output=True, text=True).stdout
    return [obj for obj in yaml.safe_load_all(rendered) if obj]


def age_key(cluster: Cluster, bin_dir: Path, path: Path) -> str:
    """A new age key, held by the cluster in Flux's namespace (where the chart's decryptionSecretRef points);
    returns its public half, the recipient people encrypt for."""
    subprocess.run([str(bin_dir / "age-keygen"), "-o", str(path)], check=True, capture_output=True)
    cluster.kubectl("create", "secret", "generic", AGE_SECRET, "-n", FLUX_NAMESPACE,
                    f"--from-file=age.agekey={path}")
    return next(line.split(": ")[1] for line in path.read_text().splitlines() if line.startswith("# public key: "))


def applied_revision(cluster: Cluster) -> str:
    kustomization = cluster.kubectl("get", "kustomization", KUSTOMIZATION, "-n", FLUX_NAMESPACE, "-o", "json",
                                    check=False)
    return str(yaml.safe_load(kustomization.stdout or "{}").get("status", {}).get("lastAppliedRevision", ""))


def kustomization_ready(cluster: Cluster) -> dict[str, Any]:
    result = cluster.kubectl("get", "kustomization", KUSTOMIZATION, "-n", FLUX_NAMESPACE, "-o", "json")
    conditions = yaml.safe_load(result.stdout).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Ready"), {})


def test_a_pushed_commit_reaches_the_nodes_and_a_bad_one_changes_nothing(
        cluster: Cluster, fleet: Fleet, flux: Flux, start_server: StartServer, operator: ProcessRecord,
        bin_dir: Path, tmp_path: Path) -> None:
    server = start_server()
    site = SiteRepository(server, tmp_path / "clone")
    first = site.push("warehouse: gateways", meshrole("gitops-warehouse", nodeSelector=WAREHOUSE, roles=["gateway"]))
    recipient = age_key(cluster, bin_dir, tmp_path / "age.agekey")
    objects = flux_objects(bin_dir, server.url)
    for obj in objects:
        cluster.apply(obj)
    try:
        # Flux applies the commit; the operator and the agents carry it to both warehouse nodes.
        cluster.wait_for(lambda: applied_revision(cluster) == f"main@sha1:{first}", timeout=90,
                         what=lambda: f"Flux to apply {first} (Ready: {kustomization_ready(cluster)})")
        for node in ("macula-nuc-01", "macula-nuc-02"):
            fleet.wait_phase("gitops-warehouse", node, "Applied")
            report = cluster.get("NodeReport", node)["status"]["entries"]["MeshRole/gitops-warehouse"]
            assert report["report"]["phase"] == "Applied", report
        assert fleet.node_labels("macula-nuc-01")["macula.io/role-gateway"] == "true"
        assert "macula.io/role-gateway" not in fleet.node_labels("macula-pi-03")  # the shop is not selected

        # A change pushed to the node's server: the nodes follow, and the NodeReports say so.
        second = site.push("warehouse: bootstrap too",
                           meshrole("gitops-warehouse", nodeSelector=WAREHOUSE, roles=["gateway", "bootstrap"]))
        cluster.wait_for(lambda: applied_revision(cluster) == f"main@sha1:{second}", timeout=60,
                         what=lambda: f"Flux to apply {second} (Ready: {kustomization_ready(cluster)})")
        generation = cluster.get("MeshRole", "gitops-warehouse")["metadata"]["generation"]
        for node in ("macula-nuc-01", "macula-nuc-02"):
            fleet.wait_phase("gitops-warehouse", node, "Applied", generation)
            fleet.cluster.wait_for(lambda n=node: fleet.node_labels(n).get("macula.io/role-bootstrap") == "true",
                                   what=f"the bootstrap label on {node}")
        good_config = fleet.nodes["macula-nuc-02"].mesh_config()

        # A commit the API server refuses: Flux reports it, naming the field; the object keeps its spec.
        refused = site.push("warehouse: a role that does not exist",
                            meshrole("gitops-warehouse", nodeSelector=WAREHOUSE, roles=["gateway", "bogus"]))
        cluster.wait_for(lambda: "bogus" in kustomization_ready(cluster).get("message", ""), timeout=60,
                         what=lambda: f"Flux to report {refused} failed (Ready: {kustomization_ready(cluster)})")
        ready = kustomization_ready(cluster)
        assert ready["status"] == "False" and "spec.roles" in ready["message"], ready
        assert applied_revision(cluster) == f"main@sha1:{second}"
        assert cluster.get("MeshRole", "gitops-warehouse")["metadata"]["generation"] == generation

        # A commit the API server admits and the operator refuses (two MeshRoles disagreeing on the same
        # nodes): Flux applies it, the objects say why they are not applied, the nodes keep their state.
        conflicting = site.push(
            "warehouse: a second role with another realm",
            meshrole("gitops-warehouse", nodeSelector=WAREHOUSE, roles=["gateway", "bootstrap"]),
            meshrole("gitops-realm", nodeSelector=WAREHOUSE, realm="com.example"))
        cluster.wait_for(lambda: applied_revision(cluster) == f"main@sha1:{conflicting}", timeout=60,
                         what=lambda: f"Flux to apply {conflicting} (Ready: {kustomization_ready(cluster)})")
        ready = cluster.wait_condition("MeshRole", "gitops-realm", "False", timeout=40)
        assert ready["reason"] == "Conflict" and "spec.realm" in ready["message"], ready
        fleet.wait_phase("gitops-realm", "macula-nuc-02", "Conflict")
        fleet.wait_phase("gitops-warehouse", "macula-nuc-02", "Conflict")  # the node applies neither
        assert fleet.nodes["macula-nuc-02"].mesh_config() == good_config
        assert fleet.node_labels("macula-nuc-02").get("macula.io/role-bootstrap") == "true"

        # What the node's `maculaos gitops status` says of it: Flux's revision, and the operator's verdicts.
        shown = subprocess.run([sys.executable, "-m", "maculaos", "gitops", "status", f"--host-root={tmp_path}",
                                f"--kubeconfig={cluster.plane.kubeconfig}"], capture_output=True, text=True,
                               check=True).stdout
        assert f"applied main@sha1:{conflicting}; Ready=True" in shown, shown
        assert "MeshRole/gitops-realm: Ready=False Conflict" in shown and "spec.realm" in shown, shown
        assert "MeshRole/gitops-warehouse: Ready=True" in shown, shown  # its own spec is fine

        # A Secret kept encrypted in git: the Backup's repository password. Flux decrypts it with the
        # node's age key; the conflict's MeshRole goes with the same commit, and the nodes apply again.
        password = "correct-horse-battery-staple"
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "stringData": {"password": password},
                  "metadata": {"name": "site-backup-repository", "namespace": DEFAULT_NAMESPACE}}
        backup = {"apiVersion": "os.macula.io/v1alpha1", "kind": "Backup", "metadata": {"name": "gitops-nightly"},
                  "spec": {"schedule": "0 2 * * *", "target": {"local": {"path": "/var/lib/maculaos-backups"}},
                           "repositoryPasswordSecretRef": {"name": "site-backup-repository", "key": "password"}}}
        encrypted = site.push("warehouse: nightly backups, their password encrypted",
                              meshrole("gitops-warehouse", nodeSelector=WAREHOUSE, roles=["gateway", "bootstrap"]),
                              secret, backup, encrypted_for=recipient)
        committed = git("show", f"{encrypted}:{SITE}/site-backup-repository.yaml", cwd=site.clone).stdout
        assert password not in committed and "ENC[AES256_GCM" in committed
        cluster.wait_for(lambda: applied_revision(cluster) == f"main@sha1:{encrypted}", timeout=60,
                         what=lambda: f"Flux to apply {encrypted} (Ready: {kustomization_ready(cluster)})")
        stored = cluster.kubectl("get", "secret", "site-backup-repository", "-n", DEFAULT_NAMESPACE,
                                 "-o", "jsonpath={.data.password}").stdout
        assert base64.b64decode(stored).decode() == password
        cluster.wait_condition("Backup", "gitops-nightly", "True", timeout=40)  # the operator found its Secret
        fleet.wait_phase("gitops-warehouse", "macula-nuc-02", "Applied")
    finally:
        # Deleting the Kustomization prunes what it applied (while its controller still runs).
        for obj in reversed(objects):
            cluster.delete(obj)
        try:
            cluster.wait_for(lambda: "gitops-" not in cluster.kubectl("get", "meshroles", "-o", "name").stdout,
                             timeout=60, what="Flux to prune the site's MeshRoles")
        finally:
            cluster.kubectl("delete", "meshrole", "gitops-warehouse", "gitops-realm", "--ignore-not-found")
            cluster.kubectl("delete", "backup", "gitops-nightly", "--ignore-not-found")
            cluster.kubectl("delete", "secret", AGE_SECRET, "-n", FLUX_NAMESPACE, "--ignore-not-found")
