"""The node firewall: one nftables table, `inet maculaos`, rendered from the mesh roles (seed 4.4, 4.9.4,
9.4), checked with `nft -c` and only then loaded. The file replaces the whole table in one transaction,
so the node is never left with half a ruleset; a ruleset nft rejects is never loaded.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maculaos.api.meshrole import ExtraPort, Firewall, MeshRoleName, Protocol, WireGuard
from maculaos.errors import MaculaosError
from maculaos.host.files import atomic_write
from maculaos.host.ports import CNI_INTERFACES, admitted

TABLE = "inet maculaos"
#: The nft families whose input hook sees TCP to this host (arp's and bridge's do not filter it).
IP_FAMILIES = ("inet", "ip", "ip6")
#: In the image: the default ruleset, written at build time; maculaos-firewall.service loads it when the
#: node has no ruleset of its own (agent/firewall.nft on the data partition), or that one fails to load.
DEFAULT_RULESET_PATH = Path("usr/lib/maculaos/firewall-default.nft")
AGENT_HEADER = "# Managed by the MaculaOS agent from MeshRole objects. Do not edit."
DEFAULT_HEADER = ("# The MaculaOS firewall of a node without config.yaml (first boot), from the list in "
                  "maculaos.host.ports. Do not edit.")


class FirewallError(MaculaosError):
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


def role_rules(roles: Iterable[MeshRoleName], firewall: Firewall, wireguard: WireGuard,
               backup_server_port: int | None = None, backup_server_sources: tuple[str, ...] = (),
               first_boot: bool = False, git_server_port: int | None = None) -> list[Rule]:
    """The accept rules the roles and options call for, in a fixed order (diffs stay readable): first the
    node's own ports (maculaos.host.ports, the one list), then the roles', the extra ports, the backup
    server's."""
    switches = {"allow_ssh": firewall.allow_ssh, "allow_kubernetes": firewall.allow_kubernetes,
                "allow_mdns": firewall.allow_mdns}
    rules = [Rule(p.protocol, p.ports, p.comment) for p in admitted(switches, first_boot) if not p.pods_only]
    if firewall.allow_mesh:
        if wireguard.enabled:
            rules.append(Rule(Protocol.UDP, (wireguard.listen_port,), "wireguard mesh"))
        if MeshRoleName.BOOTSTRAP in roles:
            rules.append(Rule(Protocol.TCP, (443,), "bootstrap"))
            rules.append(Rule(Protocol.UDP, (443,), "bootstrap quic"))
        if MeshRoleName.GATEWAY in roles:
            rules.append(Rule(Protocol.TCP, (80, 443), "gateway"))
    rules += [_extra_rule(port) for port in firewall.extra_ports]
    if backup_server_port is not None:  # config.yaml maculaos.backup_server: serving means admitting peers
        rules.append(Rule(Protocol.TCP, (backup_server_port,), "backup server", backup_server_sources))
    if git_server_port is not None and not any(git_server_port in r.ports and r.protocol is Protocol.TCP
                                               for r in rules):  # config.yaml maculaos.git_server.port
        rules.append(Rule(Protocol.TCP, (git_server_port,), "git server"))
    return rules


def _extra_rule(port: ExtraPort) -> Rule:
    return Rule(port.protocol, (port.port,), f"extra {port.protocol.value}/{port.port}", tuple(port.sources))


def render_ruleset(roles: Iterable[MeshRoleName], firewall: Firewall, wireguard: WireGuard,
                   backup_server_port: int | None = None, backup_server_sources: tuple[str, ...] = (),
                   first_boot: bool = False, git_server_port: int | None = None,
                   header: str = AGENT_HEADER) -> str:
    """The nft script that replaces table inet maculaos (or removes it when the firewall is disabled).
    backup_server_port: the node's rest-server port (config.yaml maculaos.backup_server), opened to peers
    (only from backup_server_sources when given). first_boot: the node is in first-boot mode (the
    wizard's ports open too). git_server_port: the node's git server's port (config.yaml
    maculaos.git_server), admitted when it is not the default one the list already opens."""
    header = f"{header}\ntable {TABLE}\ndelete table {TABLE}\n"
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
    rules = role_rules(roles, firewall, wireguard, backup_server_port, backup_server_sources, first_boot,
                       git_server_port)
    body += [line for rule in rules for line in rule.render()]
    indented = "\n".join(f"\t\t{line}" for line in body)
    return f"{header}table {TABLE} {{\n\tchain input {{\n{indented}\n\t}}\n}}\n"


def render_default_ruleset() -> str:
    """The ruleset of a node that has no config.yaml: the MeshRole defaults (policy drop) of a peer with no
    mesh yet (no WireGuard port), and the first-boot wizard's ports: exactly maculaos.host.ports' list.
    The boot loads it before the network comes up; never Debian's accept-everything."""
    return render_ruleset([], Firewall(), WireGuard(enabled=False), first_boot=True, header=DEFAULT_HEADER)


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


def tcp_port_blocked(port: int, nft: str = "nft") -> str | None:
    """Why the loaded ruleset drops new connections to this TCP port, or None when it admits them. A drop
    in any table's input base chain is final, so every table counts, ours and any other (a user's own
    table, or one a package added): each whose input chain has policy drop must accept the port in that
    chain (`[ip/ip6 saddr ...] tcp dport <port> accept`, sources the user chose allowed). Rules reached
    only by a jump are not followed, and an ip6 table counts even if peers come over IPv4: such a table
    counts as dropping the port (the server is not advertised, and the message names the table to change).
    Reads the kernel's ruleset (`nft -j`), not our file, so a ruleset that failed to load, or was changed
    behind the agent's back, counts as what it is."""
    try:
        result = subprocess.run([nft, "-j", "list", "ruleset"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot read the firewall: {exc}"
    if result.returncode != 0:
        return f"cannot read the firewall (nft: {result.stderr.strip() or result.returncode})"
    try:
        items = [next(iter(i.items())) for i in json.loads(result.stdout).get("nftables", []) if isinstance(i, dict)]
    except (json.JSONDecodeError, StopIteration, AttributeError) as exc:
        return f"cannot read the firewall: nft -j printed no ruleset ({exc})"
    dropping = {(c.get("family"), c.get("table"), c.get("name")) for kind, c in items
                if kind == "chain" and c.get("family") in IP_FAMILIES and c.get("hook") == "input"
                and c.get("policy", "accept") == "drop"}
    admitting = {(r.get("family"), r.get("table"), r.get("chain")) for kind, r in items
                 if kind == "rule" and _accepts_tcp_port(r.get("expr") or [], port)}
    blocked = sorted(f"{family} {table}" for family, table, chain in dropping - admitting)
    if not blocked:
        return None
    if blocked == [TABLE]:
        return f"the node firewall (table {TABLE}) drops TCP port {port}"
    others = [t for t in blocked if t != TABLE]
    return (f"the firewall drops TCP port {port} in table {', table '.join(blocked)} (table "
            f"{', table '.join(others)} is not MaculaOS's: its input chain needs a rule `tcp dport {port} accept`)")


def _accepts_tcp_port(expr: list[dict[str, Any]], port: int) -> bool:
    """A rule of the form `[ip/ip6 saddr ...] tcp dport <port, set or range holding port> accept`."""
    if not expr or "accept" not in expr[-1]:
        return False
    port_matched = False
    for item in expr[:-1]:
        if "counter" in item:
            continue
        match = item.get("match")
        if not isinstance(match, dict) or match.get("op", "==") not in ("==", "in"):
            return False
        payload = (match.get("left") or {}).get("payload") or {}
        field = (payload.get("protocol"), payload.get("field"))
        if field == ("tcp", "dport") and _holds(match.get("right"), port):
            port_matched = True
        elif field not in (("ip", "saddr"), ("ip6", "saddr")):
            return False
    return port_matched


def _holds(value: Any, port: int) -> bool:
    if isinstance(value, int):
        return value == port
    if isinstance(value, dict) and "set" in value:
        return any(_holds(v, port) for v in value["set"])
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
        return isinstance(low, int) and isinstance(high, int) and low <= port <= high
    return False


def load_ruleset(script: str, nft: str = "nft") -> None:
    """Check, then load the ruleset, remembering nothing (the default of a node without config.yaml)."""
    check_ruleset(script, nft)
    _nft([], script, nft)


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
