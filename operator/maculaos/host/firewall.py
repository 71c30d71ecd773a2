"""The node firewall: one nftables table, `inet maculaos`, rendered from the mesh roles (seed 4.4, 4.9.4,
9.4), checked with `nft -c` and only then loaded. The file replaces the whole table in one transaction,
so the node is never left with half a ruleset; a ruleset nft rejects is never loaded.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from maculaos.api.meshrole import ExtraPort, Firewall, MeshRoleName, Protocol, WireGuard
from maculaos.host.files import atomic_write

TABLE = "inet maculaos"
# k3s: API server, kubelet, embedded etcd (servers); flannel's VXLAN and WireGuard backends.
KUBERNETES_TCP_PORTS = (6443, 10250, 2379, 2380)
KUBERNETES_UDP_PORTS = (8472, 51820, 51821)
# Traffic from pods to the node arrives on the CNI's interfaces; dropping it breaks the cluster.
CNI_INTERFACES = ("cni0", "flannel.1", "flannel-wg", "flannel-wg-v6")
MDNS_PORT = 5353


class FirewallError(RuntimeError):
    """nft refused a ruleset; the message carries nft's own words."""


@dataclass(frozen=True)
class Rule:
    protocol: Protocol
    ports: tuple[int, ...]
    comment: str
    sources: tuple[str, ...] = ()

    def render(self) -> list[str]:
        ports = str(self.ports[0]) if len(self.ports) == 1 else "{ " + ", ".join(map(str, self.ports)) + " }"
        accept = f'{self.protocol.value} dport {ports} accept comment "{self.comment}"'
        if not self.sources:
            return [accept]
        by_family = (("ip", [s for s in self.sources if ":" not in s]), ("ip6", [s for s in self.sources if ":" in s]))
        return [f"{family} saddr {{ {', '.join(nets)} }} {accept}" for family, nets in by_family if nets]


def role_rules(roles: Iterable[MeshRoleName], firewall: Firewall, wireguard: WireGuard) -> list[Rule]:
    """The accept rules the roles and options call for, in a fixed order (diffs stay readable)."""
    rules: list[Rule] = []
    if firewall.allow_ssh:
        rules.append(Rule(Protocol.TCP, (22,), "ssh"))
    if firewall.allow_kubernetes:
        rules.append(Rule(Protocol.TCP, KUBERNETES_TCP_PORTS, "k3s api, kubelet, etcd"))
        rules.append(Rule(Protocol.UDP, KUBERNETES_UDP_PORTS, "k3s flannel"))
    if firewall.allow_mdns:
        rules.append(Rule(Protocol.UDP, (MDNS_PORT,), "mdns discovery"))
    if firewall.allow_mesh:
        if wireguard.enabled:
            rules.append(Rule(Protocol.UDP, (wireguard.listen_port,), "wireguard mesh"))
        if MeshRoleName.BOOTSTRAP in roles:
            rules.append(Rule(Protocol.TCP, (443,), "bootstrap"))
            rules.append(Rule(Protocol.UDP, (443,), "bootstrap quic"))
        if MeshRoleName.GATEWAY in roles:
            rules.append(Rule(Protocol.TCP, (80, 443), "gateway"))
    rules += [_extra_rule(port) for port in firewall.extra_ports]
    return rules


def _extra_rule(port: ExtraPort) -> Rule:
    return Rule(port.protocol, (port.port,), f"extra {port.protocol.value}/{port.port}", tuple(port.sources))


def render_ruleset(roles: Iterable[MeshRoleName], firewall: Firewall, wireguard: WireGuard) -> str:
    """The nft script that replaces table inet maculaos (or removes it when the firewall is disabled)."""
    header = f"# Managed by the MaculaOS agent from MeshRole objects. Do not edit.\ntable {TABLE}\ndelete table {TABLE}\n"
    if not firewall.enabled:
        return header
    body = [
        f"type filter hook input priority filter; policy {firewall.default_policy.value};",
        "ct state established,related accept",
        "ct state invalid drop",
        'iifname "lo" accept',
        "meta l4proto { icmp, ipv6-icmp } accept",
    ]
    if firewall.allow_kubernetes:
        interfaces = ", ".join(f'"{name}"' for name in CNI_INTERFACES)
        body.append(f'iifname {{ {interfaces} }} accept comment "pods"')
    body += [line for rule in role_rules(roles, firewall, wireguard) for line in rule.render()]
    indented = "\n".join(f"\t\t{line}" for line in body)
    return f"{header}table {TABLE} {{\n\tchain input {{\n{indented}\n\t}}\n}}\n"


def _nft(args: list[str], script: str, nft: str) -> None:
    result = subprocess.run([nft, *args, "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise FirewallError(result.stderr.strip() or f"nft exited with {result.returncode}")


def check_ruleset(script: str, nft: str = "nft") -> None:
    """Dry run (`nft -c`): raises FirewallError with nft's message when the kernel would refuse it."""
    _nft(["-c"], script, nft)


def table_present(nft: str = "nft") -> bool:
    result = subprocess.run([nft, "list", "table", *TABLE.split()], capture_output=True, text=True, timeout=30)
    return result.returncode == 0


def apply_ruleset(script: str, state_file: Path, nft: str = "nft") -> bool:
    """Check, then load the ruleset, and remember it in state_file. Returns False when the same ruleset is
    already loaded; a table removed behind the agent's back is loaded again."""
    enabled = f"table {TABLE} {{" in script
    if state_file.exists() and state_file.read_text() == script and table_present(nft) == enabled:
        return False
    check_ruleset(script, nft)
    _nft([], script, nft)
    atomic_write(state_file, script)
    return True
