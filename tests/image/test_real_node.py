"""A MaculaOS VM as a real Kubernetes node: the tests' image (with the node-runtime profile) boots in QEMU
and joins a real control plane on the host as a kubelet does (bootstrap token, CSR, Node authorizer and
NodeRestriction on). Helm installs the charts from the host, as a person with an existing cluster does;
the operator Deployment and the agent DaemonSet start on the VM from the image's pre-loaded archive, with
no registry. The stories then run on that one boot, in order (each test leaves the node as the next one
expects it): this module boots one node, and CI pays for it once.

The VM reaches the host's API server at 10.0.2.2 (QEMU's user network); the host reaches the VM through
forwarded ports on its loopback (SSH, the agent's metrics port for the firewall story)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from maculaos.api import GROUP, VERSION
from maculaos.devenv.controlplane import ControlPlane, default_bin_dir
from maculaos.devenv.processes import free_port
from maculaos.host.restic import Restic, local_repository
from maculaos.image.airgap import NAMESPACE, operator_values
from maculaos.image.build import default_cache
from maculaos.image.bundle import build_bundle
from maculaos.image.derive import derive_bundle
from maculaos.image.signing import development_identity
from maculaos.image.vm import NIC, Vm
from maculaos.image.vmnode import disk_node, provision_disk
from maculaos.kube.rest import ApiError, Credentials, KubeClient
from tests.image.conftest import REPO, BuiltImage, boot_timeout, forwarded_http_answers, note_figure
from tests.image.test_boot import PASSWORD_HASH, _ssh_key
from tests.restserver import RestServer, start_rest_server

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

    def ssh(self, command: str, check: bool = True, user: str = "macula") -> subprocess.CompletedProcess[str]:
        """A command on the node as the login user (sudo for root; root itself in recovery mode), over the
        forwarded SSH port."""
        result = subprocess.run(
            ["ssh", "-i", str(self.key), "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20",
             f"{user}@127.0.0.1", command], capture_output=True, text=True, timeout=120)
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


def _build_version(image: BuiltImage) -> str:
    for line in image.build_info.splitlines():
        if line.startswith("MACULAOS_VERSION="):
            return line.split("=", 1)[1].strip("'")
    raise AssertionError(f"no MACULAOS_VERSION in build-info:\n{image.build_info}")


def _next_version(version: str) -> str:
    major, minor, _ = version.split(".", 2)
    return f"{major}.{int(minor) + 1}.0"


def _derive_next(image: BuiltImage) -> Path:
    """Build N+1: the tests' image with the next version, bundled and signed as a release (kept next to the
    build in the cache: the same build derives the same bundle)."""
    version = _next_version(_build_version(image))
    target = image.out / f"derived-{version}.raucb"
    if not target.exists():
        derive_bundle(image.squashfs, image.kernel, image.initrd, target, version, "amd64",
                      development_identity(default_cache()))
    return target


def _bundle_that_panics(image: BuiltImage, folder: Path) -> Path:
    """Build N+2 whose kernel panics: the build's kernel with an initramfs that is not one (the kernel finds
    no root to mount and panics), bundled and signed as a release. The kernel panics before any root is
    mounted, so the bundle's root is a small squashfs, not a whole one: the story pays for the panics, not
    for a second 350 MB download and install (the first story pays for those)."""
    version = _next_version(_next_version(_build_version(image)))
    root, squashfs, initrd = folder / "root", folder / "root.squashfs", folder / "initrd.img"
    root.mkdir()
    (root / "never-booted").write_text(f"MaculaOS {version}: a build whose kernel panics, for the tests\n")
    subprocess.run(["mksquashfs", str(root), str(squashfs), "-quiet", "-no-progress"], check=True)
    initrd.write_bytes(b"not an initramfs\n" * 4096)
    return build_bundle(squashfs, image.kernel, initrd, folder / f"panics-{version}.raucb", version, "amd64",
                        f"panics-{version}", development_identity(default_cache()))


@pytest.fixture(scope="module")
def bundle_maker() -> Iterator[ThreadPoolExecutor]:
    """One worker makes the stories' bundles while the node boots, one after the other (the VM has the
    machine's other core)."""
    with ThreadPoolExecutor(1) as pool:
        yield pool


@pytest.fixture(scope="module")
def next_bundle(built_image: BuiltImage, bundle_maker: ThreadPoolExecutor) -> Future[Path]:
    """Build N+1 (the first story that needs it waits for it)."""
    return bundle_maker.submit(_derive_next, built_image)


@pytest.fixture(scope="module")
def bundle_that_panics(built_image: BuiltImage, bundle_maker: ThreadPoolExecutor,
                       tmp_path_factory: pytest.TempPathFactory) -> Future[Path]:
    return bundle_maker.submit(_bundle_that_panics, built_image, tmp_path_factory.mktemp("panics"))


@pytest.fixture(scope="module")
def node(built_image: BuiltImage, plane: ControlPlane, next_bundle: Future[Path],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One VM node, joined, with the charts installed and both components running on it."""
    tmp = tmp_path_factory.mktemp("real-node")
    join = plane.join_data("the image tests' real node").config_section()
    public, _ = _ssh_key(tmp)
    config = {"maculaos": {"kubernetes": join}, "ssh_authorized_keys": [public], "password_hash": PASSWORD_HASH}
    ssh_port, metrics_port = free_port(), free_port()
    # Booted from the disk image (GRUB, slots A and B) so that the upgrade story can install and boot slot B;
    # room on the data partition for containerd's copy of the images and a downloaded bundle.
    disk = provision_disk(built_image.artifact("img"), tmp / "disk.img", config, cmdline_extra="macula.test.probe=off",
                          menu_timeout=0)
    spec = disk_node(disk, forwards=((ssh_port, 22), (metrics_port, METRICS_PORT)), memory_mib=MEMORY_MIB,
                     monitor=tmp / "monitor.sock")
    kube = plane.admin_client()
    with Vm(spec, tmp / "console.log") as vm:
        vm.wait_for(r"MACULAOS-READY version=\S+ mode=disk apply=success", boot_timeout())
        # Not held to the direct-boot benchmark (test_boot is): this first boot also seeds /var and grows the
        # data partition.
        ready_at = vm.elapsed()
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
        note_figure(f"real node ({vm.accel}): MACULAOS-READY {ready_at:.0f} s, Node Ready {joined_at:.0f} s, "
                    f"agent and operator pods ready and the first NodeReport {vm.elapsed():.0f} s after QEMU started")
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


def _metrics_port_open(node: Node) -> bool:
    """Whether the agent's metrics port answers from outside the node, through the forwarded port."""
    return forwarded_http_answers(node.metrics_port, "/healthz")


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
    # systemd refuses the third start within the hour; the agent's restart fails (counted against its cap,
    # as every attempt is) and it never resets the unit (systemd keeps the Result of the kill, "signal", so
    # the agent's note says the restart failed).
    state = _kill_and_wait(node, limited, "limited",
                           lambda s: any(w in s.get("lastAction", "") for w in ("restart of", "start limit")),
                           "the limited unit's restart refused at systemd's start limit")
    journal = node.ssh(f"sudo journalctl -u {limited} --no-pager").stdout
    assert "Start request repeated too quickly" in journal, journal[-2000:]
    assert node.ssh(f"systemctl is-active {limited}", check=False).stdout.strip() == "failed"
    # After its backoff the agent tries again, each try refused and counted: a slow poll may see a later one.
    assert state["restarts"] >= 2, state
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


def _diag_lines(output: str) -> dict[str, str]:
    """`maculaos diag`'s lines by check name ("network: API server https://...") -> "PASS detail"."""
    lines = {}
    for line in output.splitlines():
        if match := re.fullmatch(r"(PASS|FAIL|SKIP) (\w+: [^:]+(?::\S+)?): (.*)", line):
            lines[match.group(2)] = f"{match.group(1)} {match.group(3)}"
    return lines


def test_diag_names_the_cut_cable_in_bounded_time_and_its_support_bundle_keeps_no_secret(node: Node) -> None:
    """`maculaos diag` on the healthy node, its support bundle (no secret of config.yaml in any of its
    files), then with the VM's cable pulled out (QEMU's set_link): the interface and the API server fail,
    and the command still ends within its probes' time."""
    config = yaml.safe_load(node.ssh("sudo cat /var/lib/maculaos/config.yaml").stdout)
    api = f"network: API server {config['maculaos']['kubernetes']['server']}"
    healthy = _diag_lines(node.ssh("sudo maculaos diag network", check=False).stdout)
    # The VM's cable: the interface with the address QEMU's user network hands out (pods have their own).
    cable = next((name for name, result in healthy.items()
                  if name.startswith("network: interface ") and "10.0.2.15/" in result), None)
    assert cable and healthy[cable].startswith("PASS") and healthy[api].startswith("PASS"), healthy
    full = node.ssh("sudo maculaos diag --full --output-dir /run/maculaos-diag", check=False).stdout
    bundle_path = re.search(r"^support bundle: (\S+)$", full, re.MULTILINE)
    assert bundle_path, full
    every_file = f"sudo tar -xzOf {bundle_path.group(1)} | grep -c -F"
    secrets = " ".join(f"-e {shlex.quote(s)}" for s in (config["maculaos"]["kubernetes"]["token"],
                                                         config["password_hash"]))
    assert node.ssh(f"{every_file} {secrets}", check=False).stdout.strip() == "0", "a secret is in the bundle"
    assert int(node.ssh(f"{every_file} -e '<removed>'").stdout) >= 2       # config.yaml is in it, redacted
    # The cable out while the command runs (started on the node a few seconds ahead, SSH goes with the link).
    node.ssh("sudo systemd-run --quiet --collect --unit=diag-cut sh -c "
             "'sleep 5; maculaos diag network > /run/diag-cut.txt 2>&1; echo exit=$? >> /run/diag-cut.txt'")
    node.vm.monitor_command(f"set_link {NIC} off")
    time.sleep(40)
    node.vm.monitor_command(f"set_link {NIC} on")
    cut = wait_until("the diag run's output over SSH, the cable back",
                     lambda: node.ssh("cat /run/diag-cut.txt", check=False).stdout, 120, node)
    lines = _diag_lines(cut)
    assert lines[cable] == "FAIL no carrier (cable or link down)", cut
    assert lines[api].startswith("FAIL unreachable"), cut
    took = re.search(r"checks failed \(([\d.]+) s\)\nexit=1$", cut.strip())
    assert took and float(took.group(1)) < 30, cut          # three-second probes, side by side
    wait_until("the Node Ready again", lambda: _node_ready(node.kube), boot_timeout(), node)


def _entry(node: Node, plural: str, name: str) -> dict[str, Any]:
    """The node's entry in an object's status (what its agent reported, folded by the operator)."""
    status = node.kube.get(f"/apis/{GROUP}/{VERSION}/{plural}/{name}").get("status") or {}
    return dict((status.get("nodes") or {}).get(node.name) or {})


def _finished(node: Node, plural: str, name: str) -> Callable[[], dict[str, Any] | None]:
    def finished() -> dict[str, Any] | None:
        entry = _entry(node, plural, name)
        return entry if entry.get("phase") in ("Succeeded", "Failed") else None
    return finished


@pytest.fixture(scope="module")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestServer]:
    """A rest-server on the host (the VM reaches it at 10.0.2.2): the node's Backup target, which the
    recovery story restores from too."""
    tmp = tmp_path_factory.mktemp("real-node-rest")
    server = start_rest_server(tmp / "repos", tmp / "logs")
    yield server
    server.stop()


REPOSITORY_PASSWORD = "real-node-repository-password"


def test_a_backup_goes_from_the_node_to_a_rest_server_and_a_restore_brings_it_back(
        node: Node, rest_server: RestServer) -> None:
    """The agent pod backs up the node's data and its own state (the Backup's default paths) with the
    node's own restic to a rest-server on the host, and a Restore puts a file changed by mistake back as
    it was."""
    port = rest_server.url.rsplit(":", 1)[1]
    node.ssh("sudo mkdir -p /var/lib/data && printf 'id,total\\n1,9.50\\n' | sudo tee /var/lib/data/orders.csv")
    node.kube.create(f"/api/v1/namespaces/{NAMESPACE}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "real-node-backup"},
        "stringData": {"password": REPOSITORY_PASSWORD}})
    node.kube.create(f"/apis/{GROUP}/{VERSION}/backups", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Backup", "metadata": {"name": "real-node-data"},
        "spec": {"nodeSelector": {"matchLabels": {"os.macula.io/maculaos": "true"}}, "schedule": "0 3 1 1 *",
                 "target": {"rest": {"url": f"http://10.0.2.2:{port}/shop"}},
                 "repositoryPasswordSecretRef": {"name": "real-node-backup", "key": "password"}}})
    path = f"/apis/{GROUP}/{VERSION}/backups/real-node-data"
    wait_until("the Backup accepted", lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in
                                                  (node.kube.get(path).get("status") or {}).get("conditions", [])),
               120, node)
    node.kube.patch(path, {"metadata": {"annotations": {"os.macula.io/run-now": "first"}}})
    entry = wait_until("the backup run on the node", _finished(node, "backups", "real-node-data"), 600, node)
    assert entry["phase"] == "Succeeded" and entry["filesNew"] >= 1, entry
    # One repository per node under the target's URL.
    assert (rest_server.data / "shop" / node.name / "config").is_file(), "no repository on the host's rest-server"
    node.ssh("echo 'lost by mistake' | sudo tee /var/lib/data/orders.csv")
    node.kube.create(f"/apis/{GROUP}/{VERSION}/restores", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Restore", "metadata": {"name": "real-node-undo"},
        "spec": {"backupName": "real-node-data", "nodeName": node.name, "snapshot": {"latest": True},
                 "paths": ["/var/lib/data"]}})
    entry = wait_until("the restore on the node", _finished(node, "restores", "real-node-undo"), 600, node)
    assert entry["phase"] == "Succeeded", entry
    assert node.ssh("cat /var/lib/data/orders.csv").stdout == "id,total\n1,9.50\n"


def _boot_id(node: Node) -> str:
    return str(node.kube.get(f"/api/v1/nodes/{node.name}")["status"]["nodeInfo"]["bootID"])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _release_index(folder: Path, bundle: Path, version: str) -> Iterator[str]:
    """A release index with one release, `bundle` as `version`, served from `folder` by a plain web server on
    the host's loopback (the VM reaches it at 10.0.2.2): yields the index's URL as the VM sees it."""
    folder.mkdir()
    (folder / bundle.name).symlink_to(bundle)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://10.0.2.2:{httpd.server_address[1]}"
    try:
        digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
        index = {"channels": {"stable": [{"version": version, "url": f"{base}/{bundle.name}", "sha256": digest,
                                          "size": bundle.stat().st_size}]}}
        (folder / "index.yaml").write_text(yaml.safe_dump(index))
        yield f"{base}/index.yaml"
    finally:
        httpd.shutdown()




def _open_metrics_port(node: Node, open_it: bool) -> None:
    """The MeshRole's extraPorts entry for the agent's metrics port, added or removed."""
    path = f"/apis/{GROUP}/{VERSION}/meshroles/real-node-peer"
    role = node.kube.get(path)
    role["spec"]["firewall"]["extraPorts"] = [{"port": METRICS_PORT, "protocol": "tcp"}] if open_it else []
    node.kube.replace(path, role)


def _agent_restarts(node: Node) -> int:
    pod = _running(node.kube, "agent")
    return int(pod["status"]["containerStatuses"][0]["restartCount"]) if pod else -1


@pytest.mark.reboots
def test_a_nodeupgrade_boots_the_next_build_in_slot_b_and_the_node_comes_back_whole(
        node: Node, next_bundle: Future[Path], tmp_path: Path) -> None:
    """The NodeUpgrade drives it all: the operator resolves the release index on the host, the agent pod
    downloads and verifies build N+1 and has the host's RAUC install it into slot B, the operator grants
    the reboot, GRUB boots B, the kubelet re-registers, and the agent commits after the health window
    (the image's mark-good leaves that boot to it; the first boot it marked good itself). Across that
    reboot, the firewall holds from the first packet: the ruleset the agent last loaded (a MeshRole's
    extraPorts entry) is in the kernel before the network is configured; the agent pod comes back and
    acts on the next MeshRole change."""
    assert "MACULAOS-MARK-GOOD slot=A" in node.vm.console      # an ordinary boot: the image marks it good
    _open_metrics_port(node, True)
    wait_until("the extraPorts entry open before the reboot", lambda: _metrics_port_open(node), 180, node)
    boot_before, restarts_before = _boot_id(node), _agent_restarts(node)
    bundle = next_bundle.result(timeout=1800)
    version = bundle.name.removeprefix("derived-").removesuffix(".raucb")
    with _release_index(tmp_path / "releases", bundle, version) as index_url:
        before = node.kube.get(f"/api/v1/nodes/{node.name}")["metadata"]["labels"].get("os.macula.io/version")
        since, started = len(node.vm.console), time.monotonic()
        node.kube.create(f"/apis/{GROUP}/{VERSION}/nodeupgrades", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "NodeUpgrade", "metadata": {"name": "real-node-next"},
            "spec": {"nodeSelector": {"matchLabels": {"os.macula.io/maculaos": "true"}}, "version": version,
                     "source": {"releaseIndex": index_url},
                     # From the boot: the kubelet and the agent's pod take minutes to come back under TCG.
                     "healthCommitWindow": "10m", "healthCheckWait": "10s"}})
        path = f"/apis/{GROUP}/{VERSION}/nodeupgrades/real-node-next"

        seen: dict[str, float] = {}   # when each of the node's phases and the operator's stages was first seen

        def finished() -> dict[str, Any] | None:
            status = node.kube.get(path).get("status") or {}
            stage = (status.get("rollout") or {}).get(node.name, {}).get("stage", "")
            phase = ((status.get("nodes") or {}).get(node.name) or {}).get("phase", "")
            for step in (f"node {phase}" if phase else "", f"operator {stage}" if stage else ""):
                if step:
                    seen.setdefault(step, time.monotonic() - started)
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        status = wait_until("the NodeUpgrade finished", finished, 1800, node)
    entry = _entry(node, "nodeupgrades", "real-node-next")
    assert status["phase"] == "Succeeded", (status, entry)
    assert (entry["phase"], entry["version"], entry["slot"]) == ("Succeeded", version, "B"), entry
    assert before and entry.get("fromVersion") == before != version, (before, entry)
    assert status["upgradedNodes"] == 1 and status["grants"] == {}, status
    after = node.vm.console[since:]
    assert f"Booting `MaculaOS {version} (slot B)'" in after, after[-3000:]   # the menu names B's version
    assert "MACULAOS-MARK-GOOD: left to the agent" in after, after[-3000:]
    obj = node.kube.get(f"/api/v1/nodes/{node.name}")
    assert obj["metadata"]["labels"].get("os.macula.io/version") == version, obj["metadata"]["labels"]
    assert not obj["spec"].get("unschedulable"), "the node was left cordoned"
    assert f"MaculaOS {version}" in obj["status"]["nodeInfo"]["osImage"], obj["status"]["nodeInfo"]
    rauc = node.ssh("sudo rauc status --output-format=json").stdout
    slots = {next(iter(s)): next(iter(s.values())) for s in yaml.safe_load(rauc)["slots"]}
    assert yaml.safe_load(rauc)["booted"] == "B", rauc
    assert slots["rootfs.1"]["boot_status"] == "good", slots
    # The node came back whole from the upgrade's reboot.
    firewall, network = node.ssh("systemctl show --value -p ActiveEnterTimestampMonotonic maculaos-firewall.service; "
                                 "systemctl show --value -p InactiveExitTimestampMonotonic systemd-networkd.service"
                                 ).stdout.split()
    assert 0 < int(firewall) < int(network), (firewall, network)   # loaded before networkd started
    assert f"tcp dport {METRICS_PORT} accept" in node.ssh("sudo nft list table inet maculaos").stdout
    assert _boot_id(node) != boot_before
    # The pod survives the reboot; its container is started again (until then the old status says ready).
    wait_until("the agent's container started again and ready", lambda: _agent_restarts(node) > restarts_before,
               boot_timeout(), node)
    wait_until("the agent's metrics port answering again", lambda: _metrics_port_open(node), 120, node)
    _open_metrics_port(node, False)
    wait_until("the resumed agent closing the port", lambda: not _metrics_port_open(node), 180, node)
    ready = re.findall(r"MACULAOS-READY .* uptime=([0-9.]+)s", after)
    steps = ", ".join(f"{step} {at:.0f} s" for step, at in sorted(seen.items(), key=lambda kv: kv[1]))
    note_figure(f"real node upgrade ({node.vm.accel}): NodeUpgrade applied -> Succeeded in "
                f"{time.monotonic() - started:.0f} s; first seen: {steps}; slot B's boot to MACULAOS-READY "
                f"{float(ready[-1]) if ready else 0:.0f} s of its uptime")


@pytest.mark.long
@pytest.mark.reboots
def test_a_rollback_asked_for_on_the_node_boots_the_previous_slot_and_the_nodeupgrade_says_so(
        node: Node, built_image: BuiltImage) -> None:
    """`maculaos upgrade --rollback` on the node, after the NodeUpgrade above finished: GRUB boots slot A
    (build N) again, the agent reports the rollback to that NodeUpgrade, and the operator records the node
    Reverted (it runs N now, changed on the node) and leaves it there: no new grant, no cordon."""
    version, path = _build_version(built_image), f"/apis/{GROUP}/{VERSION}/nodeupgrades/real-node-next"
    newer = node.kube.get(path)["status"]["target"]["version"]
    since, started, boot_before = len(node.vm.console), time.monotonic(), _boot_id(node)
    asked = node.ssh("sudo maculaos upgrade --rollback", check=False)   # the connection may drop as it reboots
    assert asked.returncode in (0, 255), asked                           # 255: ssh's own, as the node went
    node.vm.wait_for(rf"Booting `MaculaOS {re.escape(version)} \(slot A\)'", boot_timeout(), since)
    node.vm.wait_for(r"MACULAOS-READY version=\S+ mode=disk apply=success", boot_timeout(), since)

    def reverted() -> dict[str, Any] | None:
        status = node.kube.get(path).get("status") or {}
        record = (status.get("rollout") or {}).get(node.name) or {}
        return status if record.get("stage") == "Reverted" else None

    status = wait_until("the NodeUpgrade recording the node Reverted", reverted, boot_timeout(), node)
    record = status["rollout"][node.name]
    assert record["message"].startswith(f"runs {version} in slot A now, not {newer}: changed on the node"), record
    assert status["phase"] == "Succeeded" and status["upgradedNodes"] == 0 and status["grants"] == {}, status
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["message"].endswith(f"changed back on the node itself: {node.name}"), progressing
    entry = _entry(node, "nodeupgrades", "real-node-next")
    assert entry["phase"] == "RolledBack" and "maculaos upgrade --rollback" in entry["message"], entry
    assert (entry["version"], entry["slot"]) == (version, "A"), entry
    obj = node.kube.get(f"/api/v1/nodes/{node.name}")
    assert obj["metadata"]["labels"].get("os.macula.io/version") == version, obj["metadata"]["labels"]
    assert not obj["spec"].get("unschedulable") and _boot_id(node) != boot_before
    assert yaml.safe_load(node.ssh("sudo rauc status --output-format=json").stdout)["booted"] == "A"
    note_figure(f"real node rollback on the node ({node.vm.accel}): `maculaos upgrade --rollback` -> the "
                f"NodeUpgrade's record Reverted in {time.monotonic() - started:.0f} s")


@pytest.mark.long
@pytest.mark.reboots
def test_a_build_whose_kernel_panics_is_tried_three_times_and_the_node_returns_to_the_one_it_ran(
        node: Node, built_image: BuiltImage, bundle_that_panics: Future[Path], tmp_path: Path) -> None:
    """A NodeUpgrade to a build whose kernel panics (after the user deleted the one above): the agent pod
    installs it into slot B and the operator grants the reboot; each of GRUB's three tries of B ends in a
    kernel panic and a reboot, then GRUB marks B bad and boots slot A. The agent there reports the upgrade
    RolledBack (slot B did not boot), the operator records the node RolledBack and the rollout Failed, and
    the node runs build N, uncordoned, as before."""
    version = _build_version(built_image)
    node.kube.delete(f"/apis/{GROUP}/{VERSION}/nodeupgrades/real-node-next")
    bundle = bundle_that_panics.result(timeout=1800)
    broken = bundle.name.removeprefix("panics-").removesuffix(".raucb")
    path = f"/apis/{GROUP}/{VERSION}/nodeupgrades/real-node-panics"
    since, started = len(node.vm.console), time.monotonic()
    with _release_index(tmp_path / "releases", bundle, broken) as index_url:
        node.kube.create(f"/apis/{GROUP}/{VERSION}/nodeupgrades", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "NodeUpgrade", "metadata": {"name": "real-node-panics"},
            "spec": {"nodeSelector": {"matchLabels": {"os.macula.io/maculaos": "true"}}, "version": broken,
                     "source": {"releaseIndex": index_url}, "healthCommitWindow": "10m", "healthCheckWait": "10s"}})
        node.vm.wait_for(rf"Booting `MaculaOS {re.escape(broken)} \(slot B\)'", 1200, since)
    rebooted = time.monotonic() - started
    for _ in range(3):
        since = node.vm.wait_for(r"Kernel panic - not syncing", boot_timeout(), since).end()
    node.vm.wait_for(r"slot B did not boot in 3 tries: marked bad", boot_timeout(), since)
    node.vm.wait_for(rf"Booting `MaculaOS {re.escape(version)} \(slot A\)'", boot_timeout(), since)
    fell_back = time.monotonic() - started
    node.vm.wait_for(r"MACULAOS-READY version=\S+ mode=disk apply=success", boot_timeout(), since)
    ready = time.monotonic() - started

    def done() -> dict[str, Any] | None:
        status = node.kube.get(path).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_until("the NodeUpgrade finished", done, boot_timeout(), node)
    entry = _entry(node, "nodeupgrades", "real-node-panics")
    assert (entry["phase"], entry["version"], entry["slot"]) == ("RolledBack", version, "A"), entry
    assert entry["message"].startswith("slot B did not boot; the bootloader returned to slot A"), entry
    record = status["rollout"][node.name]
    assert record["stage"] == "RolledBack" and record["message"] == f"rolled back: {entry['message']}", record
    assert (status["phase"], status["upgradedNodes"], status["failedNodes"], status["grants"]) == \
        ("Failed", 0, 1, {}), status
    console = node.vm.console
    assert len(re.findall(r"Booting `MaculaOS.*\(slot B\)'", console[since:])) == 0, "B tried a fourth time"
    obj = node.kube.get(f"/api/v1/nodes/{node.name}")
    assert obj["metadata"]["labels"].get("os.macula.io/version") == version, obj["metadata"]["labels"]
    assert not obj["spec"].get("unschedulable"), "the node was left cordoned"
    rauc = yaml.safe_load(node.ssh("sudo rauc status --output-format=json").stdout)
    slots = {next(iter(s)): next(iter(s.values())) for s in rauc["slots"]}
    assert rauc["booted"] == "A" and slots["rootfs.1"]["boot_status"] == "bad", rauc
    note_figure(f"real node, a build whose kernel panics ({node.vm.accel}): NodeUpgrade applied -> Failed, the "
                f"node RolledBack, in {time.monotonic() - started:.0f} s: installed and rebooting {rebooted:.0f} s, "
                f"three tries of slot B and GRUB on slot A {fell_back:.0f} s, MACULAOS-READY {ready:.0f} s")


def _from_snapshot(repository: Path, node_path: str) -> str:
    """A file as the newest snapshot of the repository holds it (the tests' restic, reading the
    rest-server's folder; the agent records paths under its own host root)."""
    restic = Restic(local_repository(repository, REPOSITORY_PASSWORD), str(default_bin_dir() / "restic"))
    path = next(line for line in restic.run("--no-lock", "ls", "latest").stdout.splitlines()
                if line.endswith(node_path))
    return restic.run("--no-lock", "dump", "latest", path).stdout


def test_recovery_mode_asked_for_from_the_node_repairs_its_data_partition_and_restores_its_state(
        node: Node, rest_server: RestServer) -> None:
    """`maculaos recovery reboot` on the running node: GRUB boots the recovery entry once (the flag is gone
    from its environment); the rescue system has DHCP and SSH for root with config.yaml's keys, leaves the
    data partition unmounted and runs nothing of the node's own. There, over SSH: a file system damaged on
    purpose (config.yaml's inode cleared) is found and repaired, and /var/lib/maculaos comes back from the
    repository the node's Backup wrote. Last in this file: the node stays in recovery mode."""
    since = len(node.vm.console)
    node.ssh("sudo maculaos recovery reboot", check=False)       # the connection may drop as it reboots
    node.vm.wait_for(r"recovery mode asked for \(this boot only\)", boot_timeout(), since)
    ready = node.vm.wait_for(r"MACULAOS-RECOVERY-READY address=(\S+) keys=(\d+)", boot_timeout(), since)
    assert ready.group(2) == "1" and ready.group(1).startswith("10.0.2."), ready.group(0)
    root = functools.partial(node.ssh, user="root")
    data = root("blkid -L MACULA_DATA").stdout.strip()
    assert data, "no data partition"
    assert root(f"findmnt -n {data}", check=False).stdout == "", "the data partition is mounted"
    assert root("findmnt -n -o FSTYPE /var").stdout.strip() == "tmpfs"
    states = root("systemctl is-active kubelet maculaos-apply macula-ready", check=False).stdout.split()
    assert states == ["inactive"] * 3, states
    assert "RECOVERY=once" not in root("grub-editenv /boot/efi/grub/grubenv list").stdout   # once only
    status = root("maculaos recovery status").stdout
    assert f"data partition: {data}" in status and "mounted: no" in status, status
    # Asked for from the command, the recovery boot is not a try of the slot: it stays good.
    assert re.search(r"slot [AB] \(rootfs\.[01]\): booted, good", status), status
    # Damage: the inode of the node's config.yaml cleared, its directory entry left pointing at nothing.
    root(f"debugfs -w -R 'clri /var/lib/maculaos/config.yaml' {data}")
    found = root("maculaos recovery check", check=False)
    assert found.returncode == 1 and "errors found, nothing changed" in found.stdout, found.stdout[-2000:]
    repaired = root("maculaos recovery check --repair", check=False)
    assert repaired.returncode == 0 and "errors repaired" in repaired.stdout, repaired.stdout[-2000:]
    assert root("maculaos recovery check").returncode == 0
    # The state back from the node's own backup (the Backup's repository for this node on the host).
    root(f"printf %s {REPOSITORY_PASSWORD} > /run/repository-password")
    restored = root(f"maculaos recovery restore --repo rest:{rest_server.url.replace('127.0.0.1', '10.0.2.2')}"
                    f"/shop/{node.name} --password-file /run/repository-password", check=False)
    assert restored.returncode == 0, (restored.stdout, restored.stderr)
    assert "kept aside" in restored.stdout, restored.stdout
    # As the Backup saw it (the agent has edited it since: the MeshRoles changed).
    saved = _from_snapshot(rest_server.data / "shop" / node.name, "/var/lib/maculaos/config.yaml")
    assert root(f"debugfs -R 'cat /var/lib/maculaos/config.yaml' {data}").stdout == saved
    assert root(f"findmnt -n {data}", check=False).stdout == "", "left mounted"
