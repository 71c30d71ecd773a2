"""The MeshRoles' nodeLabels on the Nodes they select. The operator writes them, not the node's agent:
the admission policy lets an agent change only its own keys on its Node (api/nodekeys.py), so a
compromised node cannot give itself labels that attract other workloads. Which nodeLabels the operator
set is recorded on the Node (MESH_LABELS_ANNOTATION), so it removes those, and only those, once no
MeshRole asks for them. The same merge as on the node (host/meshrole.plan_mesh): MeshRoles in name
order, a later one's value winning; where the MeshRoles selecting a node conflict nothing changes, as
nothing is applied on the node either."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from maculaos.api.common import spec_selects
from maculaos.api.meshrole import MeshRoleSpec
from maculaos.api.nodekeys import MESH_LABELS_ANNOTATION
from maculaos.host.meshrole import MeshConflict, plan_mesh
from maculaos.kube.rest import ApiError, KubeClient, resource_path

log = logging.getLogger("maculaos.controller")


def wanted_labels(meshroles: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str]) -> dict[str, str] | None:
    """The merged nodeLabels of the valid MeshRoles selecting a Node with these labels; None when those
    MeshRoles conflict (the Node keeps what it has)."""
    specs: dict[str, MeshRoleSpec] = {}
    for name, spec in meshroles.items():
        if not spec_selects(spec, labels):
            continue
        try:
            specs[name] = MeshRoleSpec.model_validate(spec)
        except ValidationError:
            continue  # judged Invalid on its own status; it labels nothing
    try:
        return dict(plan_mesh(specs).node_labels)
    except MeshConflict:
        return None


def label_patch(node: Mapping[str, Any], wanted: Mapping[str, str]) -> dict[str, Any] | None:
    """The merge patch that gives a Node the wanted nodeLabels and drops those the operator set before and
    no MeshRole asks for now; None when the Node is already so."""
    meta = node["metadata"]
    labels: Mapping[str, str] = meta.get("labels") or {}
    record: str | None = (meta.get("annotations") or {}).get(MESH_LABELS_ANNOTATION)
    before = {key for key in (record or "").split(",") if key}
    changes: dict[str, str | None] = {k: v for k, v in wanted.items() if labels.get(k) != v}
    changes |= {k: None for k in sorted(before - wanted.keys()) if k in labels}
    new_record = ",".join(sorted(wanted)) or None
    if not changes and record == new_record:
        return None
    return {"metadata": {"labels": changes, "annotations": {MESH_LABELS_ANNOTATION: new_record}}}


def apply_mesh_labels(kube: KubeClient, meshroles: Mapping[str, Mapping[str, Any]],
                      nodes: list[dict[str, Any]]) -> int:
    """Bring every Node's nodeLabels to what its MeshRoles ask; returns how many Nodes were patched."""
    patched = 0
    for node in nodes:
        wanted = wanted_labels(meshroles, node["metadata"].get("labels") or {})
        patch = None if wanted is None else label_patch(node, wanted)
        if patch is None:
            continue
        name = node["metadata"]["name"]
        try:
            kube.patch(resource_path("v1", "nodes", name), patch)
        except ApiError as exc:  # a Node gone meanwhile, or one refused: the others still get theirs
            log.warning(f"cannot set MeshRole nodeLabels on Node {name}: {exc}")
            continue
        log.info(f"Node {name}: MeshRole nodeLabels set to {wanted or 'none'}")
        patched += 1
    return patched
