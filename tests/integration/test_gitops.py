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
from pathlib import Path
from typing import Any

import pytest

from maculaos.api.common import DEFAULT_NAMESPACE
from maculaos.devenv.processes import ProcessRecord
from tests.gitserver import HAS_LIGHTTPD, StartServer, git
from tests.integration.agent_fleet import Fleet, agent_fleet
from tests.integration.conftest import Cluster
from tests.integration.flux import (
    AGE_SECRET,
    FLUX_NAMESPACE,
    SITE,
    Flux,
    SiteRepository,
    age_key,
    applied_revision,
    flux_objects,
    kustomization_ready,
    start_flux,
)

pytestmark = pytest.mark.skipif(not HAS_LIGHTTPD, reason="lighttpd is not installed (tools/install.sh installs it)")

WAREHOUSE = {"matchLabels": {"macula.io/site": "warehouse"}}  # macula-nuc-01 and macula-nuc-02


def meshrole(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": "MeshRole", "metadata": {"name": name}, "spec": spec}


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
        cluster.wait_condition("MeshRole", "gitops-warehouse", "False", timeout=40)  # and it says why, too
        assert fleet.nodes["macula-nuc-02"].mesh_config() == good_config
        assert fleet.node_labels("macula-nuc-02").get("macula.io/role-bootstrap") == "true"

        # What the node's `maculaos gitops status` says of it: Flux's revision, and the operator's verdicts.
        shown = subprocess.run([sys.executable, "-m", "maculaos", "gitops", "status", f"--host-root={tmp_path}",
                                f"--kubeconfig={cluster.plane.kubeconfig}"], capture_output=True, text=True,
                               check=True).stdout
        assert f"applied main@sha1:{conflicting}; Ready=True" in shown, shown
        assert "MeshRole/gitops-realm: Ready=False Conflict" in shown and "spec.realm" in shown, shown
        assert "MeshRole/gitops-warehouse: Ready=False Conflict" in shown, shown

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
