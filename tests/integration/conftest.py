"""A real control plane for the integration tests: kine + kube-apiserver + kube-controller-manager built
by tools/install.sh, with the CRDs installed and three simulated nodes registered. One per session;
tests use their own object names and delete what they create."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes import config as kube_config

from maculaos.api.common import DEFAULT_NAMESPACE
from maculaos.devenv.controlplane import ControlPlane, default_bin_dir
from maculaos.devenv.demo import install_crds, start_operator
from maculaos.devenv.nodes import demo_fleet, register_node
from maculaos.devenv.processes import ProcessRecord, free_port, is_running, stop
from maculaos.kube.rest import Credentials, KubeClient
from tests.gitserver import start_server  # noqa: F401  (the git server fixture)

REPO = Path(__file__).resolve().parents[2]

OPERATOR_LEASE_SECONDS = 6
"""The Lease (`--lease-duration`, 15 s by default) of the operators these tests start themselves: the
session's and the replicas of the leader-election and fault tests. Short, so the operator that replaces
one which died holding it (SIGKILL, or an API server outage that cost it the Lease) leads after seconds;
client-go's proportions make that a renewal deadline of 4 s, renewals every second."""

API_SERVER_OUTAGE_SECONDS = OPERATOR_LEASE_SECONDS + 4
"""How long the outage tests keep the API server away: past the operator's Lease, so the leader has given
it up (it does at its renewal deadline, 2/3 of the Lease) and exits, as they require; the 4 s more cover
what they have happen meanwhile (a small restic backup, a simulated node's reboot and its agent's start)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.integration)


def kube_of(api: client.ApiClient, kind: type[KubeClient] = KubeClient) -> KubeClient:
    """The agent's REST client (or a subclass, kind) with the same server, credentials and headers
    (impersonation) as api."""
    conf = api.configuration
    headers = {k: v for k, v in api.default_headers.items() if k.lower() != "user-agent"}
    token = (conf.api_key or {}).get("authorization", "").removeprefix("Bearer ").strip() or None
    return kind(Credentials(server=conf.host, ca_file=conf.ssl_ca_cert, cert_file=conf.cert_file,
                            key_file=conf.key_file, token=token), headers)


@dataclass
class Cluster:
    """Handles on the test control plane: the real kubectl and a Python client."""

    plane: ControlPlane
    api: client.ApiClient

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.plane.bin_dir / "kubectl"), f"--kubeconfig={self.plane.kubeconfig}",
                                 *args], input=stdin, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(obj))

    def delete(self, obj: dict[str, Any]) -> None:
        self.kubectl("delete", "--ignore-not-found", "--wait=false", obj["kind"].lower(), obj["metadata"]["name"],
                     *(["-n", obj["metadata"]["namespace"]] if "namespace" in obj["metadata"] else []))

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind.lower(), name, "-o", "json").stdout))

    def condition(self, kind: str, name: str, ctype: str = "Ready") -> dict[str, Any]:
        conditions = self.get(kind, name).get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == ctype), {})

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0,
                 what: str | Callable[[], str] = "condition") -> None:
        """Poll until predicate holds; on timeout say what was awaited (a callable is asked then)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}")
            time.sleep(0.2)

    def wait_condition(self, kind: str, name: str, status: str, ctype: str = "Ready",
                       timeout: float = 30.0) -> dict[str, Any]:
        self.wait_for(lambda: self.condition(kind, name, ctype).get("status") == status, timeout,
                      f"{kind}/{name} {ctype}={status} (now {self.condition(kind, name, ctype)})")
        return self.condition(kind, name, ctype)


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    path = default_bin_dir()
    if not (path / "kube-apiserver").exists():
        pytest.fail(f"{path} has no kube-apiserver: run tools/install.sh (the README's test command does)")
    return path


def start_cluster(workdir: Path, bin_dir: Path) -> Cluster:
    plane = ControlPlane(workdir, bin_dir)
    plane.start()
    try:
        install_crds(plane.kubeconfig, bin_dir, REPO / "crds")
        api = kube_config.new_client_from_config(str(plane.kubeconfig))
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": DEFAULT_NAMESPACE}})
        for node in demo_fleet(3):
            register_node(core, node)
    except BaseException:
        plane.stop()
        raise
    return Cluster(plane, api)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, bin_dir: Path) -> Iterator[Cluster]:
    started = start_cluster(tmp_path_factory.mktemp("controlplane"), bin_dir)
    try:
        yield started
    finally:
        started.plane.stop()


class OperatorSupervisor:
    """Keeps one operator process running, as its Deployment would: a replica that lost its lease during
    an API server outage exits by design and is started again."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.record: ProcessRecord | None = None
        self.metrics_port = free_port()
        """Where the operator serves /metrics, /healthz and /readyz (on 127.0.0.1)."""

    def ensure_running(self) -> ProcessRecord:
        if self.record is None or not is_running(self.record):
            self.record = start_operator(self.cluster.plane.kubeconfig, self.cluster.plane.workdir / "logs",
                                         resync_seconds=2, metrics_port=self.metrics_port,
                                         extra_args=(f"--lease-duration={OPERATOR_LEASE_SECONDS}",))
        return self.record

    def stop(self) -> None:
        if self.record is not None:
            stop(self.record)
            self.record = None


@pytest.fixture(scope="session")
def operator_supervisor(cluster: Cluster) -> Iterator[OperatorSupervisor]:
    supervisor = OperatorSupervisor(cluster)
    try:
        yield supervisor
    finally:
        if supervisor.record is not None:
            stop(supervisor.record)
            print(Path(supervisor.record.log).read_text()[-5000:])


@pytest.fixture
def operator(operator_supervisor: OperatorSupervisor) -> ProcessRecord:
    """The operator as its own process, as in a pod, resyncing every 2 seconds (its Lease:
    OPERATOR_LEASE_SECONDS)."""
    return operator_supervisor.ensure_running()


@pytest.fixture
def no_operator(operator_supervisor: OperatorSupervisor) -> None:
    """For tests where the test itself plays the operator: the real one must not act at the same time
    (a later test's `operator` fixture starts it again)."""
    operator_supervisor.stop()


@pytest.fixture
def created(cluster: Cluster) -> Iterator[Callable[[dict[str, Any]], dict[str, Any]]]:
    """Apply objects for one test and delete them afterwards, even when the test fails."""
    made: list[dict[str, Any]] = []

    def create(obj: dict[str, Any]) -> dict[str, Any]:
        cluster.apply(obj)
        made.append(obj)
        return obj

    yield create
    for obj in reversed(made):
        cluster.delete(obj)
