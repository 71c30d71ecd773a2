"""The ports a MaculaOS node admits (seed 9.4, issue #21): one list, kept here, that every ruleset is
rendered from: the agent's (from MeshRoles), the boot's apply (from config.yaml), and the default of a node
that has no config.yaml yet (the first-boot ruleset, also shipped in the image). A port is added here, once."""

from __future__ import annotations

from dataclasses import dataclass

from maculaos.api.meshrole import Protocol

#: Traffic from pods to the node arrives on the CNI's interfaces; dropping it breaks the cluster.
CNI_INTERFACES = ("cni0", "flannel.1", "flannel-wg", "flannel-wg-v6")


@dataclass(frozen=True)
class AdmittedPort:
    """One entry of the list: what the port is for (the rule's comment), and when it is open."""

    comment: str
    protocol: Protocol
    ports: tuple[int, ...]
    switch: str | None = None
    """The Firewall field (allow_ssh, allow_kubernetes, allow_mdns) that closes it; None: always open."""
    first_boot_only: bool = False
    """Open only in first-boot mode (maculaos.host.firstboot.in_first_boot_mode); a configured node closes it."""
    pods_only: bool = False
    """Admitted only from the pod network (the CNI interfaces' accept rule): no rule of its own, so the
    LAN and the internet never reach it."""


ADMITTED_PORTS: tuple[AdmittedPort, ...] = (
    AdmittedPort("ssh", Protocol.TCP, (22,), switch="allow_ssh"),
    # k3s: API server, kubelet, embedded etcd (servers); flannel's VXLAN and WireGuard backends.
    AdmittedPort("k3s api, kubelet, etcd", Protocol.TCP, (6443, 10250, 2379, 2380), switch="allow_kubernetes"),
    AdmittedPort("k3s flannel", Protocol.UDP, (8472, 51820, 51821), switch="allow_kubernetes"),
    AdmittedPort("mdns discovery", Protocol.UDP, (5353,), switch="allow_mdns"),
    # The node's git server (config.yaml maculaos.git_server, host/gitserver.py): git's smart HTTP on
    # soft-serve's HTTP port, so soft-serve could take its place.
    AdmittedPort("git server", Protocol.TCP, (23232,)),
    # The first-boot wizard (maculaos-wizard.service) serves its page on HTTPS; HTTP only redirects.
    AdmittedPort("first-boot wizard", Protocol.TCP, (80, 443), first_boot_only=True),
    # The agent's /metrics and /healthz: the cluster's monitoring scrapes it from pods (issue #23).
    AdmittedPort("agent metrics", Protocol.TCP, (9750,), switch="allow_kubernetes", pods_only=True),
)


def admitted(switches: dict[str, bool], first_boot: bool) -> list[AdmittedPort]:
    """The entries open under these Firewall switches (field name → on), in the list's order."""
    return [p for p in ADMITTED_PORTS
            if (p.switch is None or switches[p.switch]) and (first_boot or not p.first_boot_only)]
