"""The MaculaOS API (group os.macula.io): one pydantic model per kind, the single source of crds/.

The kinds are imported on first use (PEP 562), not with the package: the node's boot path (`maculaos
agent apply --once`) needs only MeshRole's models, and building every model costs seconds under
emulation (docs/benchmarks.md, "Boot time under TCG")."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maculaos.api.backup import BackupSpec, RestoreSpec
    from maculaos.api.common import API_VERSION, GROUP, VERSION, CustomResource
    from maculaos.api.healthcheck import HealthCheckSpec
    from maculaos.api.meshrole import MeshRoleSpec
    from maculaos.api.nodereport import NodeReportSpec
    from maculaos.api.nodeupgrade import NodeUpgradeSpec

    #: Every kind, in the order they are documented.
    KINDS: tuple[type[CustomResource], ...]
    #: Every kind with a CRD: the kinds users write, and the agents' per-node reports (not judged by the
    #: controller, folded by it into the kinds' status.nodes).
    CRD_KINDS: tuple[type[CustomResource], ...]

#: The ``kubectl get maculaos`` category every kind belongs to.
CATEGORY = "maculaos"

_HOMES = {"BackupSpec": "backup", "RestoreSpec": "backup", "API_VERSION": "common", "GROUP": "common",
          "VERSION": "common", "HealthCheckSpec": "healthcheck", "MeshRoleSpec": "meshrole",
          "NodeReportSpec": "nodereport", "NodeUpgradeSpec": "nodeupgrade"}


def __getattr__(name: str) -> Any:
    """The package's names, each imported from its module when first asked for (then kept)."""
    if name in _HOMES:
        value = getattr(importlib.import_module(f"maculaos.api.{_HOMES[name]}"), name)
    elif name == "KINDS":
        value = tuple(__getattr__(kind) for kind in
                      ("MeshRoleSpec", "NodeUpgradeSpec", "BackupSpec", "RestoreSpec", "HealthCheckSpec"))
    elif name == "CRD_KINDS":
        value = (*__getattr__("KINDS"), __getattr__("NodeReportSpec"))
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def spec_model(kind: str) -> type[CustomResource]:
    """The spec model of a kind by its name, e.g. ``NodeUpgrade``."""
    kinds: tuple[type[CustomResource], ...] = __getattr__("KINDS")
    for model in kinds:
        if model.resource.kind == kind:
            return model
    raise KeyError(f"unknown kind {kind!r}")


__all__ = ["API_VERSION", "CATEGORY", "CRD_KINDS", "GROUP", "KINDS", "VERSION", "BackupSpec", "HealthCheckSpec",
           "MeshRoleSpec", "NodeReportSpec", "NodeUpgradeSpec", "RestoreSpec", "spec_model"]
