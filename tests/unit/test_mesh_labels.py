"""The operator's share of a MeshRole: its nodeLabels on the Nodes it selects (controller/mesh_labels.py)."""

from __future__ import annotations

from typing import Any

from maculaos.api.nodekeys import MESH_LABELS_ANNOTATION
from maculaos.controller.mesh_labels import label_patch, wanted_labels

SHOP: dict[str, Any] = {"nodeSelector": {"matchLabels": {"macula.io/site": "shop"}}}


def node(labels: dict[str, str], record: str | None = None) -> dict[str, Any]:
    annotations = {} if record is None else {MESH_LABELS_ANNOTATION: record}
    return {"metadata": {"name": "n", "labels": labels, "annotations": annotations}}


def test_the_selecting_meshroles_labels_merge_in_name_order() -> None:
    meshroles: dict[str, dict[str, Any]] = {
        "b": SHOP | {"nodeLabels": {"zone": "b", "tier": "edge"}}, "a": SHOP | {"nodeLabels": {"zone": "a"}},
        "elsewhere": {"nodeSelector": {"matchLabels": {"macula.io/site": "moon"}}, "nodeLabels": {"x": "1"}}}
    assert wanted_labels(meshroles, {"macula.io/site": "shop"}) == {"zone": "b", "tier": "edge"}
    assert wanted_labels(meshroles, {"macula.io/site": "lab"}) == {}


def test_an_invalid_meshrole_labels_nothing_and_a_conflict_changes_nothing() -> None:
    invalid: dict[str, dict[str, Any]] = {
        "a": SHOP | {"nodeLabels": {"zone": "a"}}, "bad": SHOP | {"roles": ["king"], "nodeLabels": {"x": "1"}}}
    assert wanted_labels(invalid, {"macula.io/site": "shop"}) == {"zone": "a"}
    conflict: dict[str, dict[str, Any]] = {
        "a": SHOP | {"nodeLabels": {"zone": "a"}}, "b": SHOP | {"realm": "com.example"}}
    assert wanted_labels(conflict, {"macula.io/site": "shop"}) is None


def test_the_patch_sets_wanted_labels_and_records_their_keys() -> None:
    assert label_patch(node({}), {"zone": "a", "tier": "edge"}) == {"metadata": {
        "labels": {"zone": "a", "tier": "edge"}, "annotations": {MESH_LABELS_ANNOTATION: "tier,zone"}}}
    assert label_patch(node({"zone": "a"}, "zone"), {"zone": "a"}) is None


def test_the_patch_removes_only_what_the_operator_set() -> None:
    """A label the operator set and no MeshRole asks for goes; one that someone else set stays."""
    patch = label_patch(node({"zone": "a", "owner": "ops"}, "zone"), {})
    assert patch == {"metadata": {"labels": {"zone": None}, "annotations": {MESH_LABELS_ANNOTATION: None}}}
    assert label_patch(node({"owner": "ops"}), {}) is None
