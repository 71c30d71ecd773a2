"""Configurations that are valid but can lock a person out of the nodes: accepted, with a Warning.

A MeshRole whose firewall leaves no node reachable over SSH, or a HealthCheck that restarts a unit the node
cannot live without (restarting it cuts the node's logs, its bus, its cluster or the way in). The operator
cannot know the person has another way in (a console, a VPN), so it warns rather than refuses. Pure
functions over a ClusterView, like validation.py."""

from __future__ import annotations

from pydantic import ValidationError

from maculaos.api.common import CustomResource
from maculaos.api.healthcheck import Check, CheckType, HealthCheckSpec
from maculaos.api.meshrole import Firewall, FirewallPolicy, MeshRoleSpec, Protocol
from maculaos.controller.validation import ClusterView, Problem, matching_nodes

SSH_PORT = 22

#: Units a node cannot live without, and what restarting one costs. Restarting any of them from a health
#: check in a loop can leave the node unreachable or its workloads gone.
ESSENTIAL_UNITS: dict[str, str] = {
    "dbus.service": "the system bus: systemd, logind and networkd lose their connections",
    "dbus.socket": "the system bus: systemd, logind and networkd lose their connections",
    "dbus-broker.service": "the system bus: systemd, logind and networkd lose their connections",
    "systemd-journald.service": "the journal: logs are lost while it restarts and services lose stdout",
    "systemd-journald.socket": "the journal: logs are lost while it restarts and services lose stdout",
    "systemd-logind.service": "logins: open sessions can be torn down",
    "systemd-networkd.service": "the network: addresses and routes can drop, cutting the node off",
    "systemd-resolved.service": "name resolution: the node cannot resolve its peers while it restarts",
    "systemd-udevd.service": "device handling: disks and network interfaces can be re-probed",
    "ssh.service": "SSH: the way a person gets in",
    "sshd.service": "SSH: the way a person gets in",
    "containerd.service": "the container runtime: every pod on the node restarts",
    "k3s.service": "Kubernetes: the node's pods, and on a server the API, restart",
    "k3s-agent.service": "Kubernetes: every pod on the node restarts",
    "kubelet.service": "Kubernetes: every pod on the node restarts",
}


def lockout_risks(name: str, spec: CustomResource | None, cluster: ClusterView) -> list[Problem]:
    """The lock-out risks of one valid object (field, what could happen); empty for other kinds."""
    if isinstance(spec, MeshRoleSpec):
        return _ssh_risks(name, spec, cluster)
    if isinstance(spec, HealthCheckSpec):
        return [risk for index, check in enumerate(spec.checks) if (risk := _restart_risk(index, check))]
    return []


def admits_ssh(firewall: Firewall) -> bool:
    """Whether the firewall lets SSH in from anywhere (a source-limited port 22 counts: someone can)."""
    if not firewall.enabled or firewall.default_policy is FirewallPolicy.ACCEPT or firewall.allow_ssh:
        return True
    return any(p.port == SSH_PORT and p.protocol is Protocol.TCP for p in firewall.extra_ports)


def restarted_unit(check: Check) -> str | None:
    """The unit a check restarts when it fails, if it restarts one."""
    if not check.restart_on_failure:
        return None
    if check.restart_unit:
        return check.restart_unit
    return check.systemd.unit if check.type is CheckType.SYSTEMD and check.systemd else None


def _restart_risk(index: int, check: Check) -> Problem | None:
    unit = restarted_unit(check)
    if unit is None or unit not in ESSENTIAL_UNITS:
        return None
    where = "restartUnit" if check.restart_unit else "systemd.unit"
    own = check.type is CheckType.SYSTEMD and check.systemd is not None and check.systemd.unit == unit
    when = "whenever it is not active, also while it is still starting" if own else "when the check fails"
    return Problem(f"spec.checks[{index}].{where}",
                   f"check {check.name} restarts {unit} {when} ({ESSENTIAL_UNITS[unit]}); set "
                   "restartOnFailure: false to only alert, or restart the service that depends on it",
                   reason="EssentialUnitRestart")


def _ssh_risks(name: str, spec: MeshRoleSpec, cluster: ClusterView) -> list[Problem]:
    """A warning when, with this MeshRole, no node of the cluster admits SSH (every node's firewall comes
    from the MeshRoles selecting it, which must agree on it)."""
    if admits_ssh(spec.firewall):
        return []
    nodes = cluster.node_labels()
    closed = set(matching_nodes(spec, nodes))
    for other, raw in cluster.meshroles().items():
        if other == name:
            continue
        try:
            role = MeshRoleSpec.model_validate(dict(raw))
        except ValidationError:
            continue
        if not admits_ssh(role.firewall):
            closed |= set(matching_nodes(role, nodes))
    if not nodes or closed != set(nodes):
        return []
    return [Problem("spec.firewall.allowSSH",
                    f"no node of the cluster admits SSH (22/tcp) with this MeshRole: its firewall drops it on "
                    f"{len(matching_nodes(spec, nodes))} node(s) and other MeshRoles on the rest; keep "
                    "allowSSH: true, or open 22/tcp in extraPorts (sources limit who may connect), unless "
                    "you have another way in (a console)", reason="SSHLockout")]
