"""Derive CustomResourceDefinitions from the pydantic models: the models are the one source of truth.

pydantic writes JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema: no $ref, no titles,
``null`` only by omission, defaults written out (the API server applies them before CEL rules run), and
maps of unknown keys marked ``x-kubernetes-preserve-unknown-fields``. This module does that translation.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from maculaos.api import CATEGORY, CRD_KINDS, GROUP, VERSION
from maculaos.api.common import CustomResource

JsonDict = dict[str, Any]
_DROPPED_KEYS = {"title", "additionalProperties"}


class _DefaultsWritingGenerator(GenerateJsonSchema):
    """Also writes defaults that come from a default_factory, which pydantic leaves out."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]  # takes no data: checked above
            if isinstance(value, BaseModel):
                # Written out in full: the API server checks defaults against the CEL rules as they are,
                # without first applying the nested defaults.
                value = value.model_dump(by_alias=True, exclude_none=True, mode="json")
            schema = {**schema, "default": value}
            schema.pop("default_factory")
        return super().default_schema(schema)


def openapi_schema(model: type[BaseModel]) -> JsonDict:
    """The structural OpenAPI v3 schema of a model."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_DefaultsWritingGenerator)
    defs = raw.pop("$defs", {})
    schema: JsonDict = _structural(raw, defs)
    return schema


def _structural(node: Any, defs: JsonDict) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = _inline(node, defs)
    out: JsonDict = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key in ("items", "anyOf"):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(node["additionalProperties"], defs)
    elif node.get("additionalProperties") is True:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _inline(node: JsonDict, defs: JsonDict) -> JsonDict:
    """Resolve $ref and the ``anyOf: [X, null]`` of Optional fields into one plain schema."""
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _inline(_merge(target, siblings), defs)
    branches = node.get("anyOf")
    if branches and any(b == {"type": "null"} for b in branches):
        rest = [b for b in branches if b != {"type": "null"}]
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        inner = rest[0] if len(rest) == 1 else {**outer, "anyOf": rest}
        return _inline(_merge(inner, outer), defs)
    return node


def _merge(base: JsonDict, extra: JsonDict) -> JsonDict:
    merged = {**base, **extra}
    rules = base.get("x-kubernetes-validations", []) + extra.get("x-kubernetes-validations", [])
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def build_crd(model: type[CustomResource]) -> JsonDict:
    """The CustomResourceDefinition of one kind."""
    info = model.resource
    spec = openapi_schema(model)
    spec["description"] = info.description
    status = openapi_schema(model.status_model)
    status["x-kubernetes-preserve-unknown-fields"] = True
    status["description"] = ("What the operator and the nodes' agents observe. Written by them only." if model.has_spec
                             else "What the node's agent reports. Written by that agent only.")
    root: JsonDict = {
        "type": "object",
        "description": info.description,
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this representation."},
            "kind": {"type": "string", "description": "Kind of this representation."},
            "metadata": {"type": "object"},
            **({"spec": spec} if model.has_spec else {}),
            "status": status,
        },
        **({"required": ["spec"]} if model.has_spec else {}),
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "maculaos"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": info.short_names,
                "categories": [CATEGORY],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [c.to_crd() for c in info.columns],
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def render_crd(model: type[CustomResource]) -> str:
    """The CRD as the YAML file committed under crds/."""
    header = f"# Generated by `maculaos crds generate` from {model.__module__}.{model.__name__}. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(model), sort_keys=False, width=120)


def crd_files() -> dict[str, str]:
    """File name -> YAML of every kind's CRD."""
    return {f"{GROUP}_{m.resource.plural}.yaml": render_crd(m) for m in CRD_KINDS}


def render_chart_crd(model: type[CustomResource]) -> str:
    """The CRD as a template of the maculaos-crds chart: Helm upgrades templates (never files in a chart's
    crds/), and `keep` leaves the CRD, and so every user's object, in place on `helm uninstall`."""
    crd = build_crd(model)
    crd["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
    text = yaml.safe_dump(crd, sort_keys=False, width=120)
    if "{{" in text:  # Helm would read it as a template action
        raise ValueError(f"the {model.resource.kind} CRD contains '{{{{', which Helm would try to render")
    header = f"# Generated by `maculaos crds generate` from {model.__module__}.{model.__name__}. Do not edit.\n"
    return header + text


def chart_crd_files() -> dict[str, str]:
    """File name -> template of every kind's CRD in charts/maculaos-crds/templates/."""
    return {f"{GROUP}_{m.resource.plural}.yaml": render_chart_crd(m) for m in CRD_KINDS}
