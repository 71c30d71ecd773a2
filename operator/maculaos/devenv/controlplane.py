"""A real Kubernetes control plane as plain processes: kine (etcd API over sqlite), kube-apiserver,
kube-controller-manager and kube-scheduler, on free loopback ports with TLS and an admin kubeconfig.

It is set up as a real cluster's is for joining nodes: Node and RBAC authorization, NodeRestriction,
bootstrap tokens, kubelet client certificates signed and auto-approved, pod CIDRs allocated, and the
`kubernetes` Service's endpoint at the address nodes use (QEMU user networking's 10.0.2.2, the host's
loopback seen from a guest). Simulated nodes have no kubelet and keep the not-ready taint (see
SIMULATION_DISABLED_CONTROLLERS): pods that do not tolerate it stay unscheduled, and none runs.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import yaml

from maculaos.devenv.pki import KUBELET_CLIENT_GROUP, Pki, create_pki
from maculaos.devenv.processes import ProcessRecord, free_port, spawn, stop, wait_for_port
from maculaos.kube.rest import ApiError, Credentials, KubeClient, resource_path

SERVICE_CIDR = "10.0.0.0/24"
#: Pod addresses (k3s's default range); kube-controller-manager gives each Node a /24 of it as spec.podCIDR.
CLUSTER_CIDR = "10.42.0.0/16"
NODE_CIDR_MASK_SIZE = 24
#: Where a QEMU guest on user networking (slirp) reaches the host's loopback: the API server binds
#: 127.0.0.1 and advertises this address, so VMs can join and pods' `kubernetes` Service leads here.
QEMU_HOST_ADDRESS = "10.0.2.2"
# Where nodes are simulated (ControlPlane.simulated_nodes), no kubelet sends heartbeats: the node lifecycle
# controller would taint every simulated node unreachable, so it is off and the tests set the simulated
# nodes' health themselves. Without it, nothing lifts the not-ready taint the API server puts on every new
# Node, a joined VM's too: a plane for real nodes only (the VM tests') keeps it on.
SIMULATION_DISABLED_CONTROLLERS = ["nodelifecycle"]
#: Off by default in kube-controller-manager (kubeadm turns it on too): deletes expired bootstrap tokens.
EXTRA_CONTROLLERS = ["tokencleaner"]
#: The extra group of the bootstrap tokens join_data makes (besides system:bootstrappers, which all have).
BOOTSTRAP_GROUP = "system:bootstrappers:maculaos"
_CSR_ROLE = "system:certificates.k8s.io:certificatesigningrequests"
#: What a kubelet's TLS bootstrap needs (kubeadm creates the same): binding name -> (ClusterRole, group).
JOIN_BINDINGS = {
    # a bootstrap token may create a CSR ...
    "maculaos:kubelet-bootstrap": ("system:node-bootstrapper", "system:bootstrappers"),
    # ... which kube-controller-manager approves (node client certificates) ...
    "maculaos:node-autoapprove-bootstrap": (f"{_CSR_ROLE}:nodeclient", "system:bootstrappers"),
    # ... as it approves a node's renewal of its own certificate.
    "maculaos:node-autoapprove-certificate-rotation": (f"{_CSR_ROLE}:selfnodeclient", "system:nodes"),
    # kube-proxy on MaculaOS (k3s's agent) runs with the node's own kubelet credentials, not a
    # ServiceAccount of its own, so nodes need the proxier's reads (EndpointSlices; Services the Node
    # authorizer already allows).
    "maculaos:node-proxier": ("system:node-proxier", "system:nodes"),
}
#: The API server's client certificate to kubelets (logs, exec) gets kubelet-api-admin, as kubeadm's does.
KUBELET_API_BINDING = {"maculaos:kubelet-api-admin": ("system:kubelet-api-admin", KUBELET_CLIENT_GROUP)}
_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (a PEM certificate) as `|` blocks, as a person would write them in config.yaml."""


_LiteralDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


@dataclass(frozen=True)
class JoinData:
    """What a node needs to join: the API server's URL as nodes reach it, the CA that signed its serving
    certificate, and a bootstrap token (the kubelet trades it for a client certificate of its own)."""

    server: str
    ca_cert_pem: str
    token: str

    def config_section(self) -> dict[str, str]:
        """The `maculaos.kubernetes` section of a node's config.yaml."""
        return {"server": self.server, "ca_cert": self.ca_cert_pem, "token": self.token}

    def config_yaml(self) -> str:
        """config.yaml text holding only that section, ready to merge into a node's."""
        return yaml.dump({"maculaos": {"kubernetes": self.config_section()}}, Dumper=_LiteralDumper,
                         sort_keys=False)


def default_bin_dir() -> Path:
    """Where tools/install.sh links the built binaries: <repo>/.tools/bin, or $MACULAOS_BIN_DIR."""
    if "MACULAOS_BIN_DIR" in os.environ:
        return Path(os.environ["MACULAOS_BIN_DIR"])
    return Path(__file__).resolve().parents[3] / ".tools" / "bin"


@dataclass
class ControlPlane:
    """One private control plane rooted in ``workdir``."""

    workdir: Path
    bin_dir: Path = field(default_factory=default_bin_dir)
    records: list[ProcessRecord] = field(default_factory=list)
    api_port: int = 0
    #: The API server's address as nodes reach it: its advertised address (the `kubernetes` Service's
    #: endpoint), named by the serving certificate and in join data. It binds 127.0.0.1 all the same.
    advertise_address: str = QEMU_HOST_ADDRESS
    #: Nodes registered by the simulation (devenv/nodes.py), which no kubelet heartbeats: node lifecycle
    #: off. False where every node is a real kubelet (a joined VM), which then loses its not-ready taint.
    simulated_nodes: bool = True
    _kine_port: int = 0

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        """The URL on this machine (loopback)."""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def node_server(self) -> str:
        """The URL nodes use."""
        return f"https://{self.advertise_address}:{self.api_port}"

    @property
    def pki(self) -> Pki:
        return Pki(self.workdir / "pki")

    def binary(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run tools/install.sh to build the control plane tools")
        return str(path)

    def start(self, timeout: float = 120.0) -> None:
        """Start kine, kube-apiserver, kube-controller-manager and kube-scheduler; return once /readyz
        answers ok."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        create_pki(self.pki.directory, (self.advertise_address,))
        logs = self.workdir / "logs"
        try:
            kine_port = self._start_kine(logs)
            self._start_apiserver(logs, kine_port, timeout)
            self._write_kubeconfig(self.kubeconfig, "admin")
            self._bind(self.admin_client(), KUBELET_API_BINDING)
            self._start_controller_manager(logs)
            self._start_scheduler(logs)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process, newest first. Safe to call twice."""
        for record in reversed(self.records):
            stop(record)
        self.records.clear()

    def _start_kine(self, logs: Path) -> int:
        port = free_port()
        db = self.workdir / "kine" / "state.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        proc, record = spawn("kine", [
            self.binary("kine"),
            f"--endpoint=sqlite://{db}?_journal=WAL&cache=shared&_busy_timeout=30000",
            f"--listen-address=127.0.0.1:{port}",
            "--metrics-bind-address=0",
        ], logs)
        self.records.append(record)
        wait_for_port(port, 30, proc)
        return port

    def restart_apiserver(self, down_seconds: float = 0.0, timeout: float = 120.0) -> None:
        """Stop kube-apiserver and start it again on the same port (clients keep their kubeconfig), away
        for down_seconds counted from the SIGTERM: it stops listening at once, but its process can take
        until stop's SIGKILL (10 s) to end, which used to come on top of down_seconds."""
        record = next(r for r in self.records if r.name == "kube-apiserver")
        stopped_at = time.monotonic()
        stop(record)
        self.records.remove(record)
        time.sleep(max(0.0, down_seconds - (time.monotonic() - stopped_at)))
        self._start_apiserver(self.workdir / "logs", self._kine_port, timeout)

    def _start_apiserver(self, logs: Path, kine_port: int, timeout: float) -> None:
        self._kine_port = kine_port
        self.api_port = self.api_port or free_port()
        pki = self.pki
        proc, record = spawn("kube-apiserver", [
            self.binary("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{kine_port}",
            "--bind-address=127.0.0.1",
            f"--advertise-address={self.advertise_address}",
            f"--secure-port={self.api_port}",
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.service_account_public_key}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-client-certificate={pki.client_cert('kubelet-client')}",
            f"--kubelet-client-key={pki.client_key('kubelet-client')}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--enable-bootstrap-token-auth=true",
            "--allow-privileged=true",
            "--profiling=false",
        ], logs)
        self.records.append(record)
        self._wait_ready(proc, timeout)

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited; see {self.workdir / 'logs' / 'kube-apiserver.log'}")
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", context=context, timeout=5) as answer:
                    if answer.status == HTTPStatus.OK:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"kube-apiserver not ready after {timeout:.0f}s ({last})")

    def _write_kubeconfig(self, path: Path, stem: str) -> None:
        """A kubeconfig on loopback with the client certificate stem (one of pki.CLIENTS, or admin)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "maculaos-dev", "cluster": {
                "server": self.server, "certificate-authority": str(self.pki.ca_cert)}}],
            "users": [{"name": stem, "user": {
                "client-certificate": str(self.pki.client_cert(stem)),
                "client-key": str(self.pki.client_key(stem))}}],
            "contexts": [{"name": "maculaos-dev", "context": {"cluster": "maculaos-dev", "user": stem}}],
            "current-context": "maculaos-dev",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def admin_client(self) -> KubeClient:
        return KubeClient(Credentials.from_kubeconfig(self.kubeconfig), user_agent="maculaos-devenv")

    def _start_controller_manager(self, logs: Path) -> None:
        """Its own identity, and each controller its ServiceAccount's (as kubeadm runs it): the default RBAC
        gives system:kube-controller-manager little beyond minting those accounts' tokens."""
        pki = self.pki
        kubeconfig = self.workdir / "controller-manager.kubeconfig"
        self._write_kubeconfig(kubeconfig, "controller-manager")
        disabled = SIMULATION_DISABLED_CONTROLLERS if self.simulated_nodes else []
        controllers = ["*", *EXTRA_CONTROLLERS, *("-" + c for c in disabled)]
        _, record = spawn("kube-controller-manager", [
            self.binary("kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--secure-port=0",
            f"--controllers={','.join(controllers)}",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=true",
            f"--cluster-cidr={CLUSTER_CIDR}",
            f"--node-cidr-mask-size={NODE_CIDR_MASK_SIZE}",
        ], logs)
        self.records.append(record)

    def _start_scheduler(self, logs: Path) -> None:
        """kube-scheduler as system:kube-scheduler (its default RBAC), serving nothing (secure port 0)."""
        kubeconfig = self.workdir / "scheduler.kubeconfig"
        self._write_kubeconfig(kubeconfig, "scheduler")
        _, record = spawn("kube-scheduler", [
            self.binary("kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
        ], logs)
        self.records.append(record)

    @staticmethod
    def _bind(kube: KubeClient, bindings: dict[str, tuple[str, str]]) -> None:
        """Create each ClusterRoleBinding (name -> ClusterRole, group) unless it exists already."""
        for name, (role, group) in bindings.items():
            body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "maculaos-devenv"}},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]}
            try:
                kube.create(resource_path("rbac.authorization.k8s.io/v1", "clusterrolebindings"), body)
            except ApiError as exc:
                if exc.status != HTTPStatus.CONFLICT:
                    raise

    def join_data(self, description: str, ttl: dt.timedelta = dt.timedelta(hours=24)) -> JoinData:
        """A new bootstrap token (a Secret in kube-system, as `kubeadm token create` makes) and the
        bindings a kubelet's TLS bootstrap needs; what a node's config.yaml must say to join."""
        kube = self.admin_client()
        self._bind(kube, JOIN_BINDINGS)
        token_id = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(6))
        token_secret = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(16))
        expiration = (dt.datetime.now(dt.timezone.utc) + ttl).replace(microsecond=0)
        secret: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
            "stringData": {
                "token-id": token_id, "token-secret": token_secret, "description": description,
                "expiration": expiration.isoformat().replace("+00:00", "Z"),
                "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                "auth-extra-groups": BOOTSTRAP_GROUP,
            },
        }
        kube.create(resource_path("v1", "secrets", namespace="kube-system"), secret)
        return JoinData(self.node_server, self.pki.ca_cert.read_text(), f"{token_id}.{token_secret}")

    def describe(self) -> dict[str, object]:
        return {"server": self.server, "kubeconfig": str(self.kubeconfig), "api_port": self.api_port,
                "advertise_address": self.advertise_address}

