"""The MaculaOS API (group os.macula.io): one pydantic model per kind, the single source of crds/."""

from maculaos.api.backup import BackupSpec, RestoreSpec
from maculaos.api.common import API_VERSION, GROUP, VERSION, CustomResource
from maculaos.api.healthcheck import HealthCheckSpec
from maculaos.api.meshrole import MeshRoleSpec
from maculaos.api.nodereport import NodeReportSpec
from maculaos.api.nodeupgrade import NodeUpgradeSpec

#: Every kind, in the order they are documented.
KINDS: tuple[type[CustomResource], ...] = (MeshRoleSpec, NodeUpgradeSpec, BackupSpec, RestoreSpec, HealthCheckSpec)

#: Every kind with a CRD: the kinds users write, and the agents' per-node reports (not judged by the
#: controller, folded by it into the kinds' status.nodes).
CRD_KINDS: tuple[type[CustomResource], ...] = (*KINDS, NodeReportSpec)

#: The ``kubectl get maculaos`` category every kind belongs to.
CATEGORY = "maculaos"


def spec_model(kind: str) -> type[CustomResource]:
    """The spec model of a kind by its name, e.g. ``NodeUpgrade``."""
    for model in KINDS:
        if model.resource.kind == kind:
            return model
    raise KeyError(f"unknown kind {kind!r}")


__all__ = ["API_VERSION", "CATEGORY", "CRD_KINDS", "GROUP", "KINDS", "VERSION", "BackupSpec", "HealthCheckSpec",
           "MeshRoleSpec", "NodeReportSpec", "NodeUpgradeSpec", "RestoreSpec", "spec_model"]
