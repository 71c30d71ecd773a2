"""A real Kubernetes control plane as plain processes: kine (etcd API over sqlite), kube-apiserver and
kube-controller-manager, on free loopback ports with TLS and an admin kubeconfig. No Docker, no kubelet:
pods stay Pending, which the demo and tests do not need; node agents run as processes instead.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import yaml

from maculaos.devenv.pki import Pki, create_pki
from maculaos.devenv.processes import ProcessRecord, free_port, spawn, stop, wait_for_port

SERVICE_CIDR = "10.0.0.0/24"
# Without a kubelet no node sends heartbeats; the node lifecycle controller would taint every simulated
# node unreachable. The simulated nodes' health is set by the tests instead.
DISABLED_CONTROLLERS = ["nodelifecycle"]


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
    _kine_port: int = 0

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def pki(self) -> Pki:
        return Pki(self.workdir / "pki")

    def binary(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run tools/install.sh to build the control plane tools")
        return str(path)

    def start(self, timeout: float = 120.0) -> None:
        """Start kine, kube-apiserver and kube-controller-manager; return once /readyz answers ok."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        create_pki(self.pki.directory)
        logs = self.workdir / "logs"
        try:
            kine_port = self._start_kine(logs)
            self._start_apiserver(logs, kine_port, timeout)
            self._write_kubeconfig()
            self._start_controller_manager(logs)
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
        """Stop kube-apiserver, wait, and start it again on the same port (clients keep their kubeconfig)."""
        record = next(r for r in self.records if r.name == "kube-apiserver")
        stop(record)
        self.records.remove(record)
        time.sleep(down_seconds)
        self._start_apiserver(self.workdir / "logs", self._kine_port, timeout)

    def _start_apiserver(self, logs: Path, kine_port: int, timeout: float) -> None:
        self._kine_port = kine_port
        self.api_port = self.api_port or free_port()
        pki = self.pki
        proc, record = spawn("kube-apiserver", [
            self.binary("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{kine_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.service_account_public_key}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
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

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "maculaos-dev", "cluster": {
                "server": self.server, "certificate-authority": str(self.pki.ca_cert)}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(self.pki.admin_cert), "client-key": str(self.pki.admin_key)}}],
            "contexts": [{"name": "maculaos-dev", "context": {"cluster": "maculaos-dev", "user": "admin"}}],
            "current-context": "maculaos-dev",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _start_controller_manager(self, logs: Path) -> None:
        pki = self.pki
        _, record = spawn("kube-controller-manager", [
            self.binary("kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            f"--controllers=*,{','.join('-' + c for c in DISABLED_CONTROLLERS)}",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ], logs)
        self.records.append(record)

    def describe(self) -> dict[str, object]:
        return {"server": self.server, "kubeconfig": str(self.kubeconfig), "api_port": self.api_port}

