"""Who writes which key on a Node. The node's agent owns exactly the keys here; the admission policy
(charts/maculaos-operator/templates/admission-policy.yaml) lets it change those and nothing else on its
Node, so a compromised agent cannot uncordon, untaint, relabel or forge the operator's annotations.
tests/unit/test_admission_policy.py holds the chart's lists to these sets."""

from __future__ import annotations

from maculaos.api.backup import BACKUP_SERVER_ANNOTATION
from maculaos.api.common import VERSION_LABEL
from maculaos.api.decommission import RESET_ANNOTATION
from maculaos.api.meshrole import MeshRoleName

#: The role labels: macula.io/role-peer on every node, one more per role the node plays.
ROLE_LABEL = "macula.io/role-{}"

#: Conditions the agent sets on its Node's status.
HEALTHY_CONDITION = "MaculaHealthy"
BACKUP_SERVER_CONDITION = "MaculaBackupServer"

AGENT_LABELS = frozenset({ROLE_LABEL.format("peer"), *(ROLE_LABEL.format(r.value) for r in MeshRoleName),
                          VERSION_LABEL})
AGENT_ANNOTATIONS = frozenset({BACKUP_SERVER_ANNOTATION, RESET_ANNOTATION})
AGENT_CONDITIONS = frozenset({HEALTHY_CONDITION, BACKUP_SERVER_CONDITION})

#: The operator's record of the MeshRole nodeLabels it set on a Node (comma-separated keys), so it removes
#: those, and only those, when no MeshRole asks for them any more.
MESH_LABELS_ANNOTATION = "os.macula.io/mesh-node-labels"
