"""Joining a cluster: the files the node's kubelet and kube-proxy (the image's node-runtime profile) or
k3s's agent start from, rendered from config.yaml's `maculaos.kubernetes` by every boot's apply.

The kubelet joins as kubeadm's and k3s's do: the bootstrap token authenticates it only to ask for the
node's own client certificate (a CSR for system:node:<name> in system:nodes, approved by the cluster);
the kubelet keeps that certificate in /var/lib/kubelet/pki and renews it, and the Node authorizer and
NodeRestriction confine it to its own Node. kube-proxy runs on the same identity (the cluster binds
system:node-proxier to system:nodes), so the node holds one credential, not two.

The units start only when these files exist (kubelet.service's ConditionPathExists): a node without the
section, or with a bad one, boots unjoined and says why on the console.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from maculaos.host.files import atomic_write
from maculaos.host.nodeconfig import KubernetesConfig, NodeConfig

KUBE_DIR = Path("var/lib/maculaos/kubernetes")
CA_CERT = KUBE_DIR / "ca.crt"
BOOTSTRAP_KUBECONFIG = KUBE_DIR / "bootstrap.kubeconfig"
KUBELET_CONFIG = KUBE_DIR / "kubelet.yaml"
KUBELET_ENV = KUBE_DIR / "kubelet.env"
KUBE_PROXY_CONFIG = KUBE_DIR / "kube-proxy.yaml"
CNI_DIR = KUBE_DIR / "cni"
CNI_CONFLIST = CNI_DIR / "10-maculaos.conflist"
#: k3s.service's environment: K3S_ROLE=agent with the server and token when the node joins a cluster.
K3S_ENV = Path("etc/maculaos/k3s.env")
#: Written by the kubelet once the cluster signed its certificate; kube-proxy and the pod network use it.
KUBELET_KUBECONFIG = Path("var/lib/kubelet/kubeconfig")
NODE_LABELS = "os.macula.io/maculaos=true"
JOIN_FILES = (CA_CERT, BOOTSTRAP_KUBECONFIG, KUBELET_CONFIG, KUBELET_ENV, KUBE_PROXY_CONFIG, K3S_ENV)


def _kubeconfig(server: str, ca_file: str, user: dict[str, str]) -> str:
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": "node", "user": user}],
        "contexts": [{"name": "node", "context": {"cluster": "cluster", "user": "node"}}],
        "current-context": "node",
    }
    return yaml.safe_dump(config, sort_keys=False)


def kubelet_configuration() -> dict[str, object]:
    """The KubeletConfiguration: systemd cgroups (containerd's too), only authenticated API callers,
    its client certificate renewed, and pods resolving names as the node does."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": f"/{CA_CERT}"}},
        "authorization": {"mode": "Webhook"},
        "rotateCertificates": True,
        "clusterDomain": "cluster.local",
        # systemd-resolved's upstream servers: its stub (127.0.0.53) is not reachable from a pod.
        "resolvConf": "/run/systemd/resolve/resolv.conf",
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        # A small node: images are removed sooner than the default 85 %, and never the pre-loaded ones
        # while a pod uses them.
        "imageGCHighThresholdPercent": 80,
        "imageGCLowThresholdPercent": 70,
    }


def kube_proxy_configuration() -> dict[str, object]:
    """nftables mode (the node's firewall is nftables too: one framework, and no iptables rules to
    list); traffic from outside the node's own pod range is masqueraded (NodeCIDR: no cluster-wide
    range to configure)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "detectLocalMode": "NodeCIDR",
        "clientConnection": {"kubeconfig": f"/{KUBELET_KUBECONFIG}"},
        "metricsBindAddress": "127.0.0.1:10249",
    }


def k3s_token(section: KubernetesConfig) -> str:
    """k3s's secure token form, K10<sha256 of the CA bundle>::<token>: the agent checks the server's CA
    against the hash before it sends the token."""
    return f"K10{hashlib.sha256(section.ca_cert.encode()).hexdigest()}::{section.token}"


def render_join(section: KubernetesConfig) -> dict[Path, str]:
    """Every file of the join, by path relative to the host root."""
    node_args = [f"--node-labels={NODE_LABELS}"]
    if section.node_ip:
        node_args.append(f"--node-ip={section.node_ip}")
    return {
        CA_CERT: section.ca_cert,
        BOOTSTRAP_KUBECONFIG: _kubeconfig(section.server, f"/{CA_CERT}", {"token": section.token}),
        KUBELET_CONFIG: yaml.safe_dump(kubelet_configuration(), sort_keys=False),
        KUBELET_ENV: f"KUBELET_NODE_ARGS={' '.join(node_args)}\n",
        KUBE_PROXY_CONFIG: yaml.safe_dump(kube_proxy_configuration(), sort_keys=False),
        K3S_ENV: (f"K3S_ROLE=agent\nK3S_URL={section.server}\nK3S_TOKEN={k3s_token(section)}\n"
                  + (f"K3S_NODE_IP={section.node_ip}\n" if section.node_ip else "")),
    }


@dataclass
class JoinChanges:
    changed: list[Path] = field(default_factory=list)
    problem: str | None = None
    """Why the node does not join although config.yaml has a section (the key and what is wrong)."""
    joined: bool = False

    def summary(self) -> str:
        if self.problem:
            return f"not joining a cluster: {self.problem}"
        state = "joining a cluster" if self.joined else "no cluster to join (no maculaos.kubernetes)"
        return f"{state}; files changed: {', '.join(f'/{p}' for p in self.changed) or 'none'}"


def apply_join(host_root: Path, config: NodeConfig) -> JoinChanges:
    """Write the join files from the section, or remove them when it is absent or bad (the kubelet then
    does not start: a half-joined node helps nobody). Secrets are root-only."""
    changes = JoinChanges(problem=config.problem("maculaos.kubernetes"))
    section = config.maculaos.kubernetes
    wanted = render_join(section) if section is not None else {}
    changes.joined = section is not None
    for path in JOIN_FILES:
        target = host_root / path
        if path in wanted:
            if atomic_write(target, wanted[path], mode=0o600):
                changes.changed.append(path)
        elif target.exists():
            target.unlink()
            changes.changed.append(path)
    return changes


def pod_network(pod_cidr: str) -> str:
    """The CNI configuration of the node's pods: a bridge with the Node's podCIDR (the cluster gives each
    node its own), masqueraded to the outside, and host ports."""
    conflist = {
        "cniVersion": "1.0.0", "name": "maculaos",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conflist, indent=2) + "\n"


def write_pod_network(host_root: Path, pod_cidr: str) -> bool:
    """containerd reads the folder when a pod starts: no restart needed."""
    return atomic_write(host_root / CNI_CONFLIST, pod_network(pod_cidr))
