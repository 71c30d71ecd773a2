"""A node's mesh roles: the union of the MeshRoles that select it (peer always), and what follows on
the host: the maculaos.mesh config section, the role services, the firewall table, the Node labels."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from maculaos.api.meshrole import Firewall, MeshRoleName, MeshRoleSpec, TlsMode, WireGuard
from maculaos.errors import MaculaosError
from maculaos.host.backup_server import SERVICE as BACKUP_SERVICE
from maculaos.host.backup_server import converge_service, served_rule
from maculaos.host.config import read_config, write_maculaos_section
from maculaos.host.firewall import apply_ruleset, check_ruleset, render_ruleset
from maculaos.host.systemd import Systemd, SystemdError

PEER_SERVICE = "macula-mesh.service"
ROLE_SERVICES = {MeshRoleName.BOOTSTRAP: "macula-bootstrap.service", MeshRoleName.GATEWAY: "macula-gateway.service"}
# The program each role service runs: the units start only when it is there (ConditionFileIsExecutable),
# so a role configured on an image without its program is reported, not restarted in a loop.
SERVICE_PROGRAMS = {PEER_SERVICE: Path("usr/bin/macula-mesh"), **{
    unit: Path(f"usr/bin/{unit.removesuffix('.service')}") for unit in ROLE_SERVICES.values()}}
ROLE_LABEL = "macula.io/role-{}"
FIREWALL_STATE = Path("var/lib/maculaos/agent/firewall.nft")


class MeshConflict(MaculaosError, ValueError):
    """MeshRoles selecting the same node disagree; nothing is applied."""


@dataclass(frozen=True)
class MeshPlan:
    """Everything the node should look like for its mesh roles."""

    roles: frozenset[MeshRoleName]
    realm: str = "io.macula"
    tls_mode: TlsMode = TlsMode.DEVELOPMENT
    bootstrap_peers: tuple[str, ...] = ()
    public_hostname: str | None = None
    firewall: Firewall = field(default_factory=Firewall)
    wireguard: WireGuard = field(default_factory=WireGuard)
    node_labels: Mapping[str, str] = field(default_factory=dict)

    def config_section(self) -> dict[str, Any]:
        """maculaos.mesh in config.yaml, in the seed 4.4 layout."""
        section: dict[str, Any] = {
            "roles": {r.value: r in self.roles for r in MeshRoleName},
            "bootstrap_peers": list(self.bootstrap_peers),
            "realm": self.realm,
            "tls_mode": self.tls_mode.value,
        }
        if self.public_hostname:
            section["public_hostname"] = self.public_hostname
        return section

    def labels(self) -> dict[str, str | None]:
        """Node labels to set; None removes a role label the node no longer has."""
        labels: dict[str, str | None] = {ROLE_LABEL.format("peer"): "true"}
        labels |= {ROLE_LABEL.format(r.value): "true" if r in self.roles else None for r in MeshRoleName}
        return labels | dict(self.node_labels)


def plan_mesh(specs: Mapping[str, MeshRoleSpec]) -> MeshPlan:
    """Merge the MeshRoles selecting one node (by name); raises MeshConflict naming both objects."""
    if not specs:
        return MeshPlan(roles=frozenset())
    names = sorted(specs)
    first = specs[names[0]]
    for name in names[1:]:
        other = specs[name]
        for attr in ("realm", "tls_mode", "firewall", "wireguard"):
            if getattr(other, attr) != getattr(first, attr):
                raise MeshConflict(f"MeshRoles {names[0]} and {name} select this node with different "
                                   f"{attr}: {getattr(first, attr)!r} vs {getattr(other, attr)!r}")
    labels: dict[str, str] = {}
    for name in names:
        labels |= specs[name].node_labels
    return MeshPlan(
        roles=frozenset(r for spec in specs.values() for r in spec.roles),
        realm=first.realm, tls_mode=first.tls_mode,
        bootstrap_peers=tuple(dict.fromkeys(p for n in names for p in specs[n].bootstrap_peers)),
        public_hostname=next((specs[n].public_hostname for n in names if specs[n].public_hostname), None),
        firewall=first.firewall, wireguard=first.wireguard, node_labels=labels)


def plan_from_config(config: Mapping[str, Any]) -> MeshPlan:
    """The plan the node's own config.yaml asks for (seed 4.4 mesh, 4.9.4 security), for nodes without
    Kubernetes. Raises ValueError naming the config key at fault."""
    maculaos = config.get("maculaos") or {}
    mesh = maculaos.get("mesh") or {}
    security = maculaos.get("security") or {}
    firewall = security.get("firewall") or {}
    wireguard = security.get("wireguard") or {}
    raw = {
        "roles": [role for role, on in (mesh.get("roles") or {}).items() if on is True],
        "bootstrapPeers": mesh.get("bootstrap_peers", ["https://boot.macula.io:443"]),
        "realm": mesh.get("realm", "io.macula"),
        "tlsMode": mesh.get("tls_mode", "development"),
        **({"publicHostname": mesh["public_hostname"]} if mesh.get("public_hostname") else {}),
        "firewall": {k: firewall[s] for s, k in (("enabled", "enabled"), ("default_policy", "defaultPolicy"),
                                                 ("allow_mesh", "allowMesh"), ("allow_ssh", "allowSSH"))
                     if s in firewall},
        "wireguard": {k: wireguard[s] for s, k in (("enabled", "enabled"), ("mesh_interface", "interface"),
                                                   ("port", "listenPort")) if s in wireguard},
    }
    bad_roles = [r for r, on in (mesh.get("roles") or {}).items() if not isinstance(on, bool)]
    if bad_roles:
        raise ValueError(f"maculaos.mesh.roles.{bad_roles[0]} must be true or false")
    try:
        spec = MeshRoleSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"config.yaml: {'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
    return plan_mesh({"config.yaml": spec})


@dataclass(frozen=True)
class MeshChanges:
    config: bool
    units: tuple[str, ...]
    firewall: bool


def apply_mesh(host_root: Path, plan: MeshPlan, systemd: Systemd, nft: str = "nft") -> MeshChanges:
    """Converge the host. Everything that can refuse is asked first (nft -c on the ruleset, the config file
    parses, the units exist), so a refusal leaves the host as it was; each step is idempotent, so a rerun
    after a crash finishes the job. config.yaml's maculaos.backup_server is the one switch of the node's
    rest-server: its unit runs, and the firewall opens its port to peers, exactly while it asks."""
    config = read_config(host_root)
    port, sources = served_rule(config) or (None, ())
    script = render_ruleset(plan.roles, plan.firewall, plan.wireguard, port, sources)
    check_ruleset(script, nft)
    wanted = {PEER_SERVICE: True} | {ROLE_SERVICES[r]: r in plan.roles for r in MeshRoleName}
    missing = [u for u, on in wanted.items() if on and not systemd.exists(u)]
    if missing:
        raise SystemdError(f"units missing on the host: {', '.join(missing)}")
    firewall_changed = apply_ruleset(script, host_root / FIREWALL_STATE, nft)
    config_changed = write_maculaos_section(host_root, "mesh", plan.config_section())
    changed_units = tuple(u for u, on in wanted.items() if (on or systemd.exists(u)) and systemd.set_enabled(u, on))
    if converge_service(host_root, config, systemd):
        changed_units += (BACKUP_SERVICE,)
    return MeshChanges(config=config_changed, units=changed_units, firewall=firewall_changed)


def services_not_installed(host_root: Path, plan: MeshPlan) -> list[str]:
    """One sentence per role the plan wants whose service program is not on the host (its unit is
    enabled but systemd skips it): the role is configured, not running."""
    wanted = [("peer", PEER_SERVICE)] + [(r.value, ROLE_SERVICES[r]) for r in sorted(plan.roles)]
    return [f"{role} role configured but its service is not installed ({unit}: /{SERVICE_PROGRAMS[unit]} is "
            f"missing; the unit is skipped)" for role, unit in wanted
            if not _executable(host_root / SERVICE_PROGRAMS[unit])]


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
