"""A MaculaOS VM as a real Kubernetes node: the tests' image (with the node-runtime profile) boots in QEMU
and joins a real control plane on the host as a kubelet does (bootstrap token, CSR, Node authorizer and
NodeRestriction on). Helm installs the charts from the host, as a person with an existing cluster does;
the operator Deployment and the agent DaemonSet start on the VM from the image's pre-loaded archive, with
no registry. The stories then run on that one boot, in order (each test leaves the node as the next one
expects it): this module boots one node, and CI pays for it once.

The VM reaches the host's API server at 10.0.2.2 (QEMU's user network); the host reaches the VM through
forwarded ports on its loopback (SSH, the agent's metrics port for the firewall story)."""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from maculaos.api import GROUP, VERSION
from maculaos.devenv.controlplane import ControlPlane
from maculaos.devenv.processes import free_port
from maculaos.image.airgap import NAMESPACE, operator_values
from maculaos.image.vm import Vm
from maculaos.image.vmnode import Build, node_spec
from maculaos.kube.rest import ApiError, Credentials, KubeClient
from tests.image.conftest import REPO, BuiltImage, boot_timeout, check_ready_time, note_figure
from tests.image.test_boot import _data_disk

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]

#: The node is expected to idle in 1 GiB with the runtime, the operator and the agent (docs/benchmarks.md).
MEMORY_MIB = 1536
#: The agent's /metrics and /healthz on the host network: not among the ports the firewall opens by itself.
METRICS_PORT = 9750


@dataclass
class Node:
    """The running VM node and how to reach it."""

    vm: Vm
    name: str
    kube: KubeClient
    """The cluster admin's client."""
    plane: ControlPlane
    ssh_port: int
    metrics_port: int
    key: Path

    def ssh(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command on the node as the login user (sudo for root), over the forwarded SSH port."""
        result = subprocess.run(
            ["ssh", "-i", str(self.key), "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20",
             "macula@127.0.0.1", command], capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"ssh {command!r}: exit {result.returncode}: {result.stderr}")
        return result

    def helm(self, *args: str) -> str:
        result = subprocess.run([str(self.plane.bin_dir / "helm"), f"--kubeconfig={self.plane.kubeconfig}", *args],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
        return result.stdout


def wait_until(what: str, check: Callable[[], Any], timeout: float, node: Node | None = None) -> Any:
    """check()'s first truthy value; fails naming what was awaited (with the console's tail)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
            last = value
        except (ApiError, OSError) as exc:
            last = exc
        time.sleep(3)
    console = f"\nconsole:\n{node.vm.tail(4000)}" if node else ""
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last}){console}")


def _node_ready(kube: KubeClient) -> str | None:
    for node in kube.get("/api/v1/nodes").get("items", []):
        conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        if conditions.get("Ready") == "True":
            return str(node["metadata"]["name"])
    return None


def _pods(kube: KubeClient, component: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/component={component}"
    return list(kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods", labelSelector=selector).get("items", []))


def _running(kube: KubeClient, component: str) -> dict[str, Any] | None:
    for pod in _pods(kube, component):
        statuses = pod.get("status", {}).get("containerStatuses") or []
        if statuses and all(s.get("ready") for s in statuses):
            return pod
    return None


def _operator_reference(image: BuiltImage) -> str:
    """The pre-loaded operator image's name:tag, as build-info records it."""
    for line in image.build_info.splitlines():
        if line.startswith("OPERATOR_IMAGE="):
            return line.split("=", 1)[1].strip("'").split()[0]
    raise AssertionError(f"no OPERATOR_IMAGE in build-info:\n{image.build_info}")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("real-node-plane"), simulated_nodes=False)
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def node(built_image: BuiltImage, plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One VM node, joined, with the charts installed and both components running on it."""
    tmp = tmp_path_factory.mktemp("real-node")
    # Room for containerd's copy of the images next to the archives (sparse: costs only what is written).
    join = plane.join_data("the image tests' real node").config_section()
    data = _data_disk(tmp, {"maculaos": {"kubernetes": join}}, size_mib=2048)
    ssh_port, metrics_port = free_port(), free_port()
    build = Build(built_image.squashfs, built_image.kernel, built_image.initrd)
    spec = node_spec(build, data, forwards=((ssh_port, 22), (metrics_port, METRICS_PORT)), memory_mib=MEMORY_MIB,
                     cmdline_extra="macula.test.probe=off")
    kube = plane.admin_client()
    with Vm(spec, tmp / "console.log") as vm:
        vm.wait_for(r"MACULAOS-READY version=\S+ mode=disk apply=success", boot_timeout())
        check_ready_time(vm, "real node, first boot")
        node = Node(vm, "", kube, plane, ssh_port, metrics_port, tmp / "id_ed25519")
        node.name = wait_until("the VM's Node Ready", lambda: _node_ready(kube), boot_timeout(), node)
        joined_at = vm.elapsed()
        values = tmp / "values.yaml"
        values.write_text(yaml.safe_dump(operator_values(_operator_reference(built_image))))
        node.helm("install", "maculaos-crds", str(REPO / "charts" / "maculaos-crds"))
        node.helm("install", "maculaos", str(REPO / "charts" / "maculaos-operator"), "--namespace", NAMESPACE,
                  "--create-namespace", "-f", str(values))
        wait_until("the agent pod Running and ready", lambda: _running(kube, "agent"), boot_timeout(), node)
        wait_until("the operator pod Running and ready", lambda: _running(kube, "operator"), boot_timeout(), node)
        report_path = f"/apis/{GROUP}/{VERSION}/nodereports/{node.name}"
        wait_until("the node's first NodeReport", lambda: kube.get(report_path), boot_timeout(), node)
        note_figure(f"real node ({vm.accel}): Node Ready {joined_at:.0f} s, agent and operator pods ready and the "
                    f"first NodeReport {vm.elapsed():.0f} s after QEMU started")
        yield node


def test_the_node_joins_with_its_own_identity_and_runs_the_charts_pods(node: Node) -> None:
    """Joined as system:node:<name> by a certificate the cluster signed (not the token), labelled as
    MaculaOS, with a podCIDR; both pods from the pre-loaded archive (never pulled)."""
    obj = node.kube.get(f"/api/v1/nodes/{node.name}")
    assert obj["metadata"]["labels"].get("os.macula.io/maculaos") == "true", obj["metadata"]["labels"]
    assert obj["spec"].get("podCIDR"), obj["spec"]
    signed = [c for c in node.kube.get("/apis/certificates.k8s.io/v1/certificatesigningrequests").get("items", [])
              if c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
              and c.get("status", {}).get("certificate")]
    assert signed, "no kubelet client certificate was issued"
    kubeconfig = node.ssh("sudo cat /var/lib/kubelet/kubeconfig").stdout
    assert "kubelet-client-current.pem" in kubeconfig and "token" not in kubeconfig, kubeconfig
    for component in ("agent", "operator"):
        pod = _running(node.kube, component)
        assert pod is not None and pod["spec"]["nodeName"] == node.name, pod
        assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Never", pod["spec"]
    # The operator's pod is on the pod network and reaches the API through the `kubernetes` Service.
    operator = _running(node.kube, "operator")
    assert operator is not None and not operator["spec"].get("hostNetwork"), operator["spec"]


def _metrics_port_open(node: Node, timeout: float = 8.0) -> bool:
    """Whether the agent's metrics port answers through the forwarded port. Through QEMU's user network a
    host connection is always accepted first: a port the node's firewall drops sends nothing back."""
    try:
        with socket.create_connection(("127.0.0.1", node.metrics_port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            return conn.recv(64).startswith(b"HTTP/")
    except OSError:
        return False


def test_a_meshrole_opens_and_closes_a_port_in_the_vms_own_kernel(node: Node) -> None:
    """The agent pod writes config.yaml and loads the nft ruleset on the node: the agent's metrics port is
    closed by default, opened by an extraPorts entry, and closed again when the entry goes."""
    assert not _metrics_port_open(node), "the node firewall let the metrics port through by default"
    role: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MeshRole", "metadata": {"name": "real-node-peer"},
        "spec": {"nodeSelector": {"matchLabels": {"os.macula.io/maculaos": "true"}},
                 "firewall": {"extraPorts": [{"port": METRICS_PORT, "protocol": "tcp"}]}},
    }
    path = f"/apis/{GROUP}/{VERSION}/meshroles"
    node.kube.create(path, role)
    wait_until("the extraPorts entry open on the node", lambda: _metrics_port_open(node), 180, node)
    ruleset = node.ssh("sudo nft list table inet maculaos").stdout
    assert f"tcp dport {METRICS_PORT} accept" in ruleset, ruleset
    role["spec"]["firewall"]["extraPorts"] = []
    current = node.kube.get(f"{path}/real-node-peer")
    role["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    node.kube.replace(f"{path}/real-node-peer", role)
    wait_until("the port closed again", lambda: not _metrics_port_open(node), 180, node)


def _agent_token(node: Node) -> str:
    """The agent pod's own service-account token, as the kubelet mounted it into the pod."""
    pod = _running(node.kube, "agent")
    assert pod is not None
    uid = pod["metadata"]["uid"]
    volumes = f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~projected"
    return node.ssh(f"sudo sh -c 'cat {volumes}/*/token'").stdout.strip()


def test_the_agent_pods_own_token_writes_only_its_own_nodes_objects(node: Node) -> None:
    """The admission policies confine a real pod: with the token the kubelet gave the agent pod, it may
    change the keys it owns on its own Node (api/nodekeys.py), but no other key there, and nothing on
    another Node nor another node's NodeReport."""
    other = "real-node-other"
    node.kube.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": other}})
    reports = f"/apis/{GROUP}/{VERSION}/nodereports"
    node.kube.create(reports, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NodeReport",
                               "metadata": {"name": other, "labels": {"os.macula.io/node": other}}})
    agent = KubeClient(Credentials(server=node.plane.server, ca_file=str(node.plane.pki.ca_cert),
                                   token=_agent_token(node)))
    owned = {"metadata": {"labels": {"macula.io/role-peer": "true"}}}  # what the agent sets on every node
    agent.patch(f"/api/v1/nodes/{node.name}", owned)        # its own key on its own Node: allowed
    foreign = {"metadata": {"labels": {"os.macula.io/confinement-test": "yes"}}}
    for path, body in ((f"/api/v1/nodes/{node.name}", foreign), (f"/api/v1/nodes/{other}", owned),
                       (f"{reports}/{other}", foreign)):
        with pytest.raises(ApiError) as refused:
            agent.patch(path, body)
        assert refused.value.status == 403, (path, refused.value)
    assert "os.macula.io/confinement-test" not in node.kube.get(f"/api/v1/nodes/{node.name}")["metadata"]["labels"]


#: Two units that die when killed: one the check may restart once (its cap), one whose systemd start limit
#: (two starts an hour) stops the second restart. Restart=no: only the HealthCheck restarts them.
FLAKY_UNITS = {
    "maculaos-test-capped.service": "",
    "maculaos-test-limited.service": "StartLimitBurst=2\nStartLimitIntervalSec=1h\n",
}


def _check_state(node: Node, name: str, check: str) -> dict[str, Any]:
    report = node.kube.get(f"/apis/{GROUP}/{VERSION}/nodereports/{node.name}")
    entry = (report.get("status", {}).get("entries") or {}).get(f"HealthCheck/{name}") or {}
    return dict((entry.get("report", {}).get("checks") or {}).get(check) or {})


def _kill_and_wait(node: Node, unit: str, check: str, predicate: Callable[[dict[str, Any]], bool],
                   what: str) -> dict[str, Any]:
    node.ssh(f"sudo systemctl kill -s KILL {unit}")

    def reached() -> dict[str, Any] | None:
        state = _check_state(node, "real-node-flaky", check)
        return state if predicate(state) else None

    result: dict[str, Any] = wait_until(what, reached, 240, node)
    return result


def test_health_checks_restart_a_dead_unit_capped_and_within_systemds_start_limit(node: Node) -> None:
    """Under the VM's real systemd: a unit that dies is restarted by the agent; the restarts stop at
    maxRestarts; a unit at systemd's start limit is left failed (the agent never resets it)."""
    for unit, limits in FLAKY_UNITS.items():
        content = f"[Unit]\n{limits}[Service]\nExecStart=/bin/sleep infinity\n"
        node.ssh(f"printf '{content}' | sudo tee /etc/systemd/system/{unit} >/dev/null")
    node.ssh(f"sudo systemctl daemon-reload && sudo systemctl start {' '.join(FLAKY_UNITS)}")
    checks = [{"name": unit.split("-")[2].removesuffix(".service"), "type": "systemd", "systemd": {"unit": unit},
               "interval": "5s", "timeout": "3s", "failureThreshold": 1, "restartOnFailure": True,
               "maxRestarts": max_restarts, "restartWindow": "1h", "cooldown": "5s"}
              for unit, max_restarts in zip(FLAKY_UNITS, (1, 5), strict=True)]
    node.kube.create(f"/apis/{GROUP}/{VERSION}/healthchecks", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "HealthCheck", "metadata": {"name": "real-node-flaky"},
        "spec": {"nodeSelector": {"matchLabels": {"os.macula.io/maculaos": "true"}}, "checks": checks}})
    for check in ("capped", "limited"):
        wait_until(f"check {check} passing", lambda c=check: _check_state(node, "real-node-flaky", c).get("ok"),
                   240, node)
    capped, limited = FLAKY_UNITS
    _kill_and_wait(node, capped, "capped", lambda s: s.get("restarts") == 1 and s.get("ok"),
                   "the capped unit restarted once")
    state = _kill_and_wait(node, capped, "capped", lambda s: "not restarting" in s.get("lastAction", ""),
                           "the capped unit left failed at its cap")
    assert "1 restart(s) within 1h already" in state["lastAction"], state
    assert node.ssh(f"systemctl is-active {capped}", check=False).stdout.strip() == "failed"
    _kill_and_wait(node, limited, "limited", lambda s: s.get("restarts") == 1 and s.get("ok"),
                   "the limited unit restarted once")
    # systemd refuses the third start within the hour; the agent's restart fails and it never resets the
    # unit (systemd keeps the Result of the kill, "signal", so the agent's note says the restart failed).
    state = _kill_and_wait(node, limited, "limited",
                           lambda s: any(w in s.get("lastAction", "") for w in ("restart of", "start limit")),
                           "the limited unit's restart refused at systemd's start limit")
    journal = node.ssh(f"sudo journalctl -u {limited} --no-pager").stdout
    assert "Start request repeated too quickly" in journal, journal[-2000:]
    assert node.ssh(f"systemctl is-active {limited}", check=False).stdout.strip() == "failed"
    assert state["restarts"] == 1, state
    node.kube.delete(f"/apis/{GROUP}/{VERSION}/healthchecks/real-node-flaky")


def test_memory_at_idle_is_noted(node: Node) -> None:
    """The node's memory in use with the runtime, the operator and the agent (a figure for
    docs/benchmarks.md, not a check), and each pod's own (its cgroup's memory.current)."""
    script = ("awk '/MemTotal/{t=$2} /MemAvailable/{a=$2} END{print int((t-a)/1024)}' /proc/meminfo; "
              "for c in /sys/fs/cgroup/kubepods.slice/*/*/memory.current "
              "/sys/fs/cgroup/kubepods.slice/*/memory.current; do echo \"$c $(cat $c)\"; done")
    lines = node.ssh(f"sudo sh -c {shlex.quote(script)}").stdout.splitlines()
    pods = {p["metadata"]["uid"].replace("-", "_"): p["metadata"]["labels"]["app.kubernetes.io/component"]
            for component in ("agent", "operator") for p in _pods(node.kube, component)}
    used = [f"node {lines[0]} MiB in use of {MEMORY_MIB}"]
    for line in lines[1:]:
        path, _, value = line.rpartition(" ")
        for uid, component in pods.items():
            if f"pod{uid}.slice/memory" in path:
                used.append(f"{component} pod {int(value) // 2**20} MiB")
    note_figure("real node at idle: " + ", ".join(used))
    assert int(lines[0]) > 0


def _boot_id(node: Node) -> str:
    return str(node.kube.get(f"/api/v1/nodes/{node.name}")["status"]["nodeInfo"]["bootID"])


def test_after_a_reboot_the_firewall_holds_from_the_first_packet_and_the_node_comes_back(node: Node) -> None:
    """`systemctl reboot` in the VM: the ruleset the agent last loaded (a MeshRole's extraPorts entry) is in
    the kernel before the network is configured, the kubelet re-registers, the agent pod comes back and
    acts on the next MeshRole change."""
    path = f"/apis/{GROUP}/{VERSION}/meshroles/real-node-peer"
    role = node.kube.get(path)
    role["spec"]["firewall"]["extraPorts"] = [{"port": METRICS_PORT, "protocol": "tcp"}]
    node.kube.replace(path, role)
    wait_until("the extraPorts entry open before the reboot", lambda: _metrics_port_open(node), 180, node)
    before = _boot_id(node)
    agent = _running(node.kube, "agent")
    assert agent is not None
    restarts = agent["status"]["containerStatuses"][0]["restartCount"]
    since, rebooted = len(node.vm.console), time.monotonic()
    node.ssh("sudo systemctl reboot", check=False)
    node.vm.wait_for(r"MACULAOS-READY", boot_timeout(), since)
    ready = time.monotonic() - rebooted
    firewall, network = node.ssh("systemctl show --value -p ActiveEnterTimestampMonotonic maculaos-firewall.service; "
                                 "systemctl show --value -p InactiveExitTimestampMonotonic systemd-networkd.service"
                                 ).stdout.split()
    assert 0 < int(firewall) < int(network), (firewall, network)   # loaded before networkd started
    assert f"tcp dport {METRICS_PORT} accept" in node.ssh("sudo nft list table inet maculaos").stdout
    wait_until("the Node Ready with a new boot ID",
               lambda: _node_ready(node.kube) and _boot_id(node) != before, boot_timeout(), node)
    # The pod survives the reboot; its container is started again (until then the old status says ready).
    def restarted() -> bool:
        pod = _running(node.kube, "agent")
        return pod is not None and pod["status"]["containerStatuses"][0]["restartCount"] > restarts

    wait_until("the agent's container started again and ready", restarted, boot_timeout(), node)
    note_figure(f"real node reboot ({node.vm.accel}): MACULAOS-READY {ready:.0f} s, Node Ready with the new boot "
                f"and the agent pod ready {time.monotonic() - rebooted:.0f} s after `systemctl reboot`")
    wait_until("the agent's metrics port answering again", lambda: _metrics_port_open(node), 120, node)
    role = node.kube.get(path)
    role["spec"]["firewall"]["extraPorts"] = []
    node.kube.replace(path, role)
    wait_until("the resumed agent closing the port", lambda: not _metrics_port_open(node), 180, node)
