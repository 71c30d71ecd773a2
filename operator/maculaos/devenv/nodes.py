"""Simulated MaculaOS nodes: a Node object as a kubelet would register it, and a sandbox host root.

The host root stands in for the node's / (the agent's /host): the files MaculaOS keeps there are
written as a freshly installed node would have them, so agents can converge them like a real host.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import yaml
from kubernetes import client

from maculaos.api.common import VERSION_LABEL
from maculaos.api.times import now_rfc3339
from maculaos.host.nodeconfig import NodeConfig

BASE_VERSION = "0.1.0"
#: Files the image installs; sandbox host roots get the same ones (image-build/ is their one source).
IMAGE_OVERLAY = Path(__file__).resolve().parents[3] / "image-build" / "overlay"


@dataclass(frozen=True)
class SimulatedNode:
    name: str
    arch: str = "amd64"
    site: str = "warehouse"
    control_plane: bool = False
    version: str = BASE_VERSION
    extra_labels: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": self.arch,
            "node.kubernetes.io/instance-type": "k3s",
            VERSION_LABEL: self.version,
            "macula.io/site": self.site,
            "macula.io/arch": self.arch,
            **self.extra_labels,
        }
        if self.control_plane:
            labels["node-role.kubernetes.io/control-plane"] = "true"
        return labels


def demo_fleet(count: int) -> list[SimulatedNode]:
    """A small mixed fleet: NUCs in a warehouse (the first runs the k3s server) and Raspberry Pis in a shop."""
    nodes = []
    for i in range(1, count + 1):
        if i % 3 == 0:
            nodes.append(SimulatedNode(name=f"macula-pi-{i:02d}", arch="arm64", site="shop"))
        else:
            nodes.append(SimulatedNode(name=f"macula-nuc-{i:02d}", control_plane=i == 1))
    return nodes


def node_status(node: SimulatedNode, ready: bool = True) -> dict[str, object]:
    now = now_rfc3339()

    def condition(ctype: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {"type": ctype, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": now}

    return {
        "conditions": [
            condition("Ready", "True" if ready else "False", "KubeletReady" if ready else "KubeletNotReady",
                      "kubelet is posting ready status" if ready else "simulated node is down"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ],
        "addresses": [{"type": "Hostname", "address": node.name}, {"type": "InternalIP", "address": "127.0.0.1"}],
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "120Gi"},
        "allocatable": {"cpu": "4", "memory": "7800Mi", "pods": "110", "ephemeral-storage": "110Gi"},
        "nodeInfo": {
            "architecture": node.arch, "operatingSystem": "linux", "osImage": f"MaculaOS {node.version}",
            "kernelVersion": "6.12.0-maculaos", "containerRuntimeVersion": "containerd://1.7.24",
            "kubeletVersion": "v1.35.4+k3s1", "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
            "bootID": str(uuid.uuid4()),
        },
    }


def register_node(api: client.CoreV1Api, node: SimulatedNode, ready: bool = True) -> None:
    """Create the Node (or relabel an existing one) and set its status as a kubelet would."""
    try:
        api.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=node.name, labels=node.labels)))
    except client.ApiException as exc:
        if exc.status != HTTPStatus.CONFLICT:
            raise
        api.patch_node(node.name, {"metadata": {"labels": node.labels}})
    api.patch_node_status(node.name, {"status": node_status(node, ready)})


def create_host_root(root: Path, node: SimulatedNode) -> Path:
    """Lay out a sandbox host root as a fresh MaculaOS install has it. Its config.yaml also holds keys
    MaculaOS does not read (dns_nameservers, labels, modules, k3s, network): kept, as NodeConfig keeps
    keys it does not know."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "hostname").write_text(node.name + "\n")
    (root / "etc" / "os-release").write_text(
        f'NAME="MaculaOS"\nID=maculaos\nID_LIKE=debian\nVERSION_ID="{node.version}"\n'
        f'PRETTY_NAME="MaculaOS {node.version}"\n')
    config_dir = root / "var" / "lib" / "maculaos"
    config_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "maculaos": {
            "hostname": node.name,
            "dns_nameservers": ["1.1.1.1", "8.8.8.8"],
            "labels": {"macula.io/role": "edge", "macula.io/arch": node.arch},
            "modules": ["br_netfilter", "overlay"],
        },
        "k3s": {"args": ["server" if node.control_plane else "agent"], "airgap": True},
        "network": {"dhcp": True},
        "ssh_authorized_keys": [],
    }
    NodeConfig.parse(config)  # a sandbox starts from a config the node accepts
    (config_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "var" / "lib" / "data").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True, exist_ok=True)
    # Not the image's RAUC config (real partitions): a simulated node's comes from devenv/rauc.py.
    shutil.copytree(IMAGE_OVERLAY, root, dirs_exist_ok=True,
                    ignore=lambda folder, names: ["rauc"] if Path(folder) == IMAGE_OVERLAY / "etc" else [])
    return root
