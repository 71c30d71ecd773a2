"""Flux for the GitOps tests and benchmark: source-controller and kustomize-controller as processes against
a test control plane, the chart's GitOps objects, and a person's clone of the fleet repository."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from maculaos.devenv.controlplane import default_bin_dir
from maculaos.devenv.manifests import KUBE_VERSION
from maculaos.devenv.processes import ProcessRecord, free_port, spawn, stop, wait_for_port
from tests.gitserver import Server, git
from tests.integration.conftest import REPO, Cluster

FLUX_NAMESPACE = "flux-system"
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


def flux_objects(bin_dir: Path, url: str, interval: str = "2s") -> list[dict[str, Any]]:
    """The chart's GitOps objects, as `helm install` creates them for a Flux the user runs: the fleet
    repository and a Kustomization for this site's folder, looking for commits every interval."""
    rendered = subprocess.run(
        [str(bin_dir / "helm"), "template", "maculaos", str(REPO / "charts" / "maculaos-operator"),
         f"--kube-version={KUBE_VERSION}", "--show-only=templates/gitops.yaml",
         f"--set=gitops.enabled=true,gitops.url={url},gitops.path=./{SITE},gitops.interval={interval}",
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
