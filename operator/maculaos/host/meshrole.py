"""A node's mesh roles: the union of the MeshRoles that select it (peer always), and what follows on
the host: the maculaos.mesh config section, the role services, the firewall table, the role labels."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from maculaos.api.meshrole import (
    Firewall,
    MeshRoleName,
    MeshRoleSpec,
    TlsMode,
    WireGuard,
    describe_disagreements,
    disagreements,
)
from maculaos.api.nodekeys import ROLE_LABEL
from maculaos.errors import MaculaosError
from maculaos.host.backup_server import SERVICE as BACKUP_SERVICE
from maculaos.host.backup_server import converge_service, served_rule
from maculaos.host.firewall import apply_ruleset, check_ruleset, render_ruleset
from maculaos.host.firstboot import in_first_boot_mode
from maculaos.host.gitserver import SERVICE as GIT_SERVICE
from maculaos.host.gitserver import SYNC_TIMER as GIT_SYNC_TIMER
from maculaos.host.gitserver import converge_git_server
from maculaos.host.gitserver import served_port as served_git_port
from maculaos.host.nodeconfig import (
    ConfigSection,
    FirewallConfig,
    MeshConfig,
    MeshRoleSecurityConfig,
    NodeConfig,
    SecurityConfig,
    WireGuardConfig,
    read_node_config,
    write_sections,
)
from maculaos.host.systemd import Systemd, SystemdError

PEER_SERVICE = "macula-mesh.service"
ROLE_SERVICES = {MeshRoleName.BOOTSTRAP: "macula-bootstrap.service", MeshRoleName.GATEWAY: "macula-gateway.service"}
# The program each role service runs: the units start only when it is there (ConditionFileIsExecutable),
# so a role configured on an image without its program is reported, not restarted in a loop.
SERVICE_PROGRAMS = {PEER_SERVICE: Path("usr/bin/macula-mesh"), **{
    unit: Path(f"usr/bin/{unit.removesuffix('.service')}") for unit in ROLE_SERVICES.values()}}
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
    """The MeshRoles' nodeLabels merged: the operator's to write (controller/mesh_labels.py), not the agent's."""

    def config_section(self) -> MeshConfig:
        """maculaos.mesh in config.yaml: what the node plays, every role named."""
        return MeshConfig(roles={r.value: r in self.roles for r in MeshRoleName},
                          bootstrap_peers=list(self.bootstrap_peers), realm=self.realm, tls_mode=self.tls_mode,
                          public_hostname=self.public_hostname or None)

    def labels(self) -> dict[str, str | None]:
        """The role labels the agent sets; None removes a role label the node no longer has. The
        MeshRoles' nodeLabels are not among them: the operator writes those (controller/mesh_labels.py),
        as the admission policy lets an agent change only its own keys on its Node."""
        labels: dict[str, str | None] = {ROLE_LABEL.format("peer"): "true"}
        return labels | {ROLE_LABEL.format(r.value): "true" if r in self.roles else None for r in MeshRoleName}


def plan_mesh(specs: Mapping[str, MeshRoleSpec]) -> MeshPlan:
    """Merge the MeshRoles selecting one node (by name); raises MeshConflict naming both objects."""
    if not specs:
        return MeshPlan(roles=frozenset())
    names = sorted(specs)
    first = specs[names[0]]
    for name in names[1:]:
        other = specs[name]
        differ = disagreements(first, other)
        if differ:
            raise MeshConflict(f"MeshRoles {names[0]} and {name} select this node and disagree: "
                               f"{describe_disagreements(differ, names[0], name)}")
    labels: dict[str, str] = {}
    for name in names:
        labels |= specs[name].node_labels
    return MeshPlan(
        roles=frozenset(r for spec in specs.values() for r in spec.roles),
        realm=first.realm, tls_mode=first.tls_mode,
        bootstrap_peers=tuple(dict.fromkeys(p for n in names for p in specs[n].bootstrap_peers)),
        public_hostname=next((specs[n].public_hostname for n in names if specs[n].public_hostname), None),
        firewall=first.firewall, wireguard=first.wireguard, node_labels=labels)


def plan_from_config(config: NodeConfig) -> MeshPlan:
    """The plan the node's own config.yaml asks for, for the boot and for nodes without Kubernetes: the
    roles of maculaos.mesh (which the agent rewrites from the MeshRoles), and the firewall and WireGuard
    the MeshRoles last gave (maculaos.meshrole_security, recorded by the agent when it loaded that
    ruleset), else maculaos.security's. So the boot loads the ruleset the agent last loaded. A corrupt
    meshrole_security is not used: the MeshRole defaults apply (policy drop; see
    `meshrole_security_problem`). Raises NodeConfigError naming the file and the key at fault."""
    config.require("maculaos", "maculaos.mesh", "maculaos.security")
    mesh = config.maculaos.mesh or MeshConfig()
    firewall, wireguard = _security(config)
    spec = MeshRoleSpec(roles=sorted(mesh.roles_on()), bootstrap_peers=mesh.bootstrap_peers, realm=mesh.realm,
                        tls_mode=mesh.tls_mode, public_hostname=mesh.public_hostname,
                        firewall=firewall, wireguard=wireguard)
    return plan_mesh({"config.yaml": spec})


def plan_without_meshroles(config: NodeConfig) -> MeshPlan:
    """The plan of a node no (valid) MeshRole selects: peer only, with maculaos.security's firewall and
    WireGuard, as the boot's apply renders them once the agent has removed maculaos.meshrole_security.
    Raises NodeConfigError when maculaos.security is bad."""
    config.require("maculaos", "maculaos.security")
    firewall, wireguard = _own_security(config)
    return MeshPlan(roles=frozenset(), firewall=firewall, wireguard=wireguard)


def _security(config: NodeConfig) -> tuple[Firewall, WireGuard]:
    """The recorded MeshRoles' firewall and WireGuard, the defaults when the record is bad, else the
    node's own."""
    if config.problem("maculaos.meshrole_security") is not None:
        return Firewall(), WireGuard()
    recorded = config.maculaos.meshrole_security
    if recorded is not None:
        return recorded.firewall.to_api(), recorded.wireguard.to_api()
    return _own_security(config)


def _own_security(config: NodeConfig) -> tuple[Firewall, WireGuard]:
    security = config.maculaos.security or SecurityConfig()
    return (security.firewall or FirewallConfig()).to_api(), (security.wireguard or WireGuardConfig()).to_api()


def meshrole_security_problem(config: NodeConfig) -> str | None:
    """Why the recorded MeshRole firewall cannot be used, naming the file and the key, or None."""
    problem = config.problem("maculaos.meshrole_security")
    if problem is None:
        return None
    return (f"{config.source}: {problem}; the firewall is the MeshRole defaults (policy drop; SSH, k3s, mDNS, "
            f"the git server and the mesh open; no extra ports) until the agent applies the node's MeshRoles again")


def recorded_security(plan: MeshPlan) -> MeshRoleSecurityConfig:
    """maculaos.meshrole_security for a plan made from MeshRoles: what the boot rebuilds its ruleset from."""
    return MeshRoleSecurityConfig(firewall=FirewallConfig.from_api(plan.firewall),
                                  wireguard=WireGuardConfig.from_api(plan.wireguard))


@dataclass(frozen=True)
class MeshChanges:
    config: bool
    units: tuple[str, ...]
    firewall: bool


def apply_mesh(host_root: Path, plan: MeshPlan, systemd: Systemd, nft: str = "nft",
               meshroles: bool | None = None) -> MeshChanges:
    """Converge the host. Everything that can refuse is asked first (nft -c on the ruleset, the config file
    parses, the units exist), so a refusal leaves the host as it was; each step is idempotent, so a rerun
    after a crash finishes the job. config.yaml's maculaos.backup_server is the one switch of the node's
    rest-server: its unit runs, and the firewall opens its port to peers, exactly while it asks.
    meshroles: True when the plan comes from MeshRoles (the agent), which records its firewall and
    WireGuard in maculaos.meshrole_security for the boot; False when none selects the node (the record is
    removed); None (the boot's apply) leaves the record as it is. The record and maculaos.mesh are written
    in one atomic write of config.yaml, right after the ruleset they describe is loaded."""
    config = read_node_config(host_root)
    port, sources = served_rule(config) or (None, ())
    # The wizard's ports stay open while it is still needed (a half-done wizard's config.yaml exists).
    script = render_ruleset(plan.roles, plan.firewall, plan.wireguard, port, sources,
                            first_boot=in_first_boot_mode(host_root), git_server_port=served_git_port(config))
    check_ruleset(script, nft)
    wanted = {PEER_SERVICE: True} | {ROLE_SERVICES[r]: r in plan.roles for r in MeshRoleName}
    present = systemd.unit_file_states([*wanted, BACKUP_SERVICE, GIT_SERVICE, GIT_SYNC_TIMER])
    missing = [u for u, on in wanted.items() if on and u not in present]
    if missing:
        raise SystemdError(f"units missing on the host: {', '.join(missing)}")
    firewall_changed = apply_ruleset(script, host_root / FIREWALL_STATE, nft)
    sections: dict[str, ConfigSection | None] = {"mesh": plan.config_section()}
    if meshroles is not None:
        sections["meshrole_security"] = recorded_security(plan) if meshroles else None
    config_changed = write_sections(host_root, sections)
    changed_units = systemd.set_all_enabled(wanted, present)
    if converge_service(host_root, config, systemd, present):
        changed_units += (BACKUP_SERVICE,)
    if converge_git_server(host_root, config, systemd, present):  # maculaos.git_server: the same one-switch rule
        changed_units += (GIT_SERVICE,)
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
