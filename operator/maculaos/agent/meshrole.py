"""The MeshRole side of the agent: which MeshRoles select this node, the plan, applying it, reporting."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from maculaos.api.common import spec_selects
from maculaos.api.meshrole import MeshRoleName, MeshRoleSpec
from maculaos.host.backup_server import backup_server_warnings
from maculaos.host.config import HostConfigError
from maculaos.host.firewall import FirewallError
from maculaos.host.gitserver import git_server_warnings
from maculaos.host.meshrole import (
    MeshConflict,
    MeshPlan,
    apply_mesh,
    plan_mesh,
    plan_without_meshroles,
    services_not_installed,
)
from maculaos.host.nodeconfig import read_node_config
from maculaos.host.systemd import Systemd, SystemdError

log = logging.getLogger("maculaos.agent")
PLURAL = "meshroles"


@dataclass(frozen=True)
class MeshOutcome:
    """What happened on this node: per-object entries for status.nodes, and the labels to set."""

    entries: dict[str, dict[str, Any]]
    labels: dict[str, str | None]
    warnings: list[str]
    applied: MeshPlan | None = None
    """The plan now on the host, when this pass applied (or found) it."""


def selected(objects: Mapping[str, dict[str, Any]], node_labels: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The MeshRoles whose nodeSelector picks this node (unparseable ones included, to report them)."""
    return {name: obj for name, obj in objects.items() if spec_selects(obj.get("spec") or {}, node_labels)}


def _entry(obj: dict[str, Any], phase: str, message: str, roles: str = "") -> dict[str, Any]:
    entry = {"phase": phase, "message": message, "observedGeneration": obj["metadata"].get("generation")}
    return entry | ({"roles": roles} if roles else {})


def converge_mesh(objects: Mapping[str, dict[str, Any]], node_labels: Mapping[str, str], host_root: Path,
                  systemd: Systemd, nft: str, public_address: bool,
                  applied: MeshPlan | None = None) -> MeshOutcome:
    """Apply the union of the selecting MeshRoles to the host; on conflict or refusal apply nothing.
    When the plan equals `applied` (already on the host), the host is left alone. The MeshRoles' firewall
    and WireGuard are recorded in config.yaml (maculaos.meshrole_security) with the ruleset, for the
    boot's apply; with no valid MeshRole selecting the node the record goes, and the node gets
    maculaos.security's firewall, as the boot's apply gives it."""
    mine = selected(objects, node_labels)
    specs: dict[str, MeshRoleSpec] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name, obj in mine.items():
        try:
            specs[name] = MeshRoleSpec.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            entries[name] = _entry(obj, "Invalid", f"not applied: {exc.errors()[0]['msg']}")
    try:
        plan = plan_mesh(specs)
    except MeshConflict as exc:
        entries |= {name: _entry(mine[name], "Conflict", f"nothing applied: {exc}") for name in specs}
        return MeshOutcome(entries=entries, labels={}, warnings=[str(exc)])
    try:
        if not specs:
            plan = plan_without_meshroles(read_node_config(host_root))
        changes = None if plan == applied else apply_mesh(host_root, plan, systemd, nft, meshroles=bool(specs))
    except (FirewallError, SystemdError, HostConfigError) as exc:
        entries |= {name: _entry(mine[name], "Failed", f"host left unchanged: {exc}") for name in specs}
        return MeshOutcome(entries=entries, labels={}, warnings=[str(exc)])
    roles = ",".join(["peer", *sorted(r.value for r in plan.roles)])
    if changes and (changes.config or changes.units or changes.firewall):
        log.info(f"mesh roles applied: {roles} (units changed: {', '.join(changes.units) or 'none'}, "
                 f"firewall {'reloaded' if changes.firewall else 'unchanged'})")
    warnings = _warnings(plan, public_address) + services_not_installed(host_root, plan) + \
        backup_server_warnings(host_root) + git_server_warnings(host_root)
    message = "applied" + (f"; warning: {'; '.join(warnings)}" if warnings else "")
    entries |= {name: _entry(mine[name], "Applied", message, roles) for name in specs}
    return MeshOutcome(entries=entries, labels=plan.labels(), warnings=warnings, applied=plan)


def _warnings(plan: MeshPlan, public_address: bool) -> list[str]:
    found = []
    for role in (MeshRoleName.BOOTSTRAP, MeshRoleName.GATEWAY):
        if role in plan.roles and not public_address:
            found.append(f"{role.value} role on a node with no public address: peers cannot reach it")
    return found
