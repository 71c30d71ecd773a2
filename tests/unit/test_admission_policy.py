"""The admission policy's lists of what the agent may change on its Node are the keys the agent's code
writes (api/nodekeys.py): a key added to the agent without the policy would be refused in production,
one left in the policy after the agent stopped writing it would be a hole."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from maculaos.api.decommission import DECOMMISSION_ANNOTATION, GRANTED_ANNOTATION
from maculaos.api.meshrole import MeshRoleName
from maculaos.api.nodekeys import (
    AGENT_ANNOTATIONS,
    AGENT_CONDITIONS,
    AGENT_LABELS,
    BACKUP_SERVER_CONDITION,
    HEALTHY_CONDITION,
    MESH_LABELS_ANNOTATION,
)
from maculaos.controller.nodeupgrade import CORDON_ANNOTATION
from maculaos.host.meshrole import MeshPlan

POLICY = Path(__file__).resolve().parents[2] / "charts" / "maculaos-operator" / "templates" / "admission-policy.yaml"


def policy_list(variable: str) -> set[str]:
    """A list variable of the agent-own-node policy (a CEL list of string literals)."""
    found = re.search(rf"- name: {variable}\n\s+expression: \"(\[.*?\])\"\n", POLICY.read_text())
    assert found, f"no variable {variable} in {POLICY}"
    return set(ast.literal_eval(found.group(1)))


@pytest.mark.parametrize("variable, keys", [
    ("ownLabels", AGENT_LABELS), ("ownAnnotations", AGENT_ANNOTATIONS), ("ownConditions", AGENT_CONDITIONS)])
def test_the_policy_admits_exactly_the_agents_keys(variable: str, keys: frozenset[str]) -> None:
    assert policy_list(variable) == keys


def test_the_agents_labels_are_what_its_mesh_plan_sets() -> None:
    """Every label a mesh plan sets or removes is one the agent owns (nodeLabels are the operator's)."""
    plans = [MeshPlan(roles=frozenset()), MeshPlan(roles=frozenset(MeshRoleName), node_labels={"site": "lab"})]
    assert all(plan.labels().keys() <= AGENT_LABELS for plan in plans)


def test_the_operators_annotations_are_not_the_agents() -> None:
    assert not {CORDON_ANNOTATION, MESH_LABELS_ANNOTATION, DECOMMISSION_ANNOTATION, GRANTED_ANNOTATION} \
        & AGENT_ANNOTATIONS
    assert {HEALTHY_CONDITION, BACKUP_SERVER_CONDITION} == AGENT_CONDITIONS
