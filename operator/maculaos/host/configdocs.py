"""docs/config.md from NodeConfig: the key reference of config.yaml, generated as crds/ is from api/, so
it cannot drift from what the node reads (tests/unit/test_nodeconfig.py fails when it is stale)."""

from __future__ import annotations

import json
import types
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from maculaos.host.nodeconfig import NodeConfig

HEADER = """# config.yaml reference

<!-- Generated from operator/maculaos/host/nodeconfig.py by `maculaos config docs`: do not edit. -->

`/var/lib/maculaos/config.yaml` on the data partition holds a node's own settings: root's alone (0600),
since it may hold secrets. `maculaos install --config FILE` (and an ISO made with
`maculaos image iso --install-config FILE`) puts it on a new node and refuses a file the node would refuse,
naming the key. The agent rewrites `maculaos.mesh` from the MeshRoles that select the node, and records
its Backups under `maculaos.backup`; everything else is the provisioner's.

Keys not listed here are kept as they are (a newer MaculaOS may have written them; an older one must
not drop them), except inside `maculaos.backup_server` and `maculaos.git_server`, which refuse unknown
keys so that a misspelt key does not silently change who may use the server. A bad value is reported
naming its key, such as `maculaos.backup_server.port`; it stops only what depends on that section.
"""


def _type(annotation: Any) -> str:
    """A field's type in config.yaml's words."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a) for a in args if a is not type(None))
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    names = {bool: "boolean", int: "integer", str: "string"}
    return names.get(annotation, "any") if isinstance(annotation, type) else "any"


def _limits(info: FieldInfo) -> str:
    """The field's bounds (range, length, pattern), for the reader who writes the value by hand."""
    found = {k: getattr(m, k) for m in info.metadata for k in ("ge", "le", "max_length", "pattern")
             if getattr(m, k, None) is not None}
    parts = []
    if "ge" in found or "le" in found:
        parts.append(f"{found.get('ge', '')}–{found.get('le', '')}")
    if "max_length" in found:
        parts.append(f"at most {found['max_length']}")
    if "pattern" in found:
        parts.append(f"matching `{found['pattern']}`")
    return "; ".join(parts)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "absent"
    if isinstance(value, BaseModel):
        return "its keys' defaults"
    return f"`{json.dumps(to_jsonable_python(value))}`"


def _describe(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def _sections(model: type[BaseModel], path: str) -> list[tuple[str, type[BaseModel]]]:
    """Every mapping of the file with its key path, depth first (`<name>` for a mapping's own keys)."""
    found = [(path, model)]
    for name, info in model.model_fields.items():
        for sub in _models(info.annotation):
            step = f"{name}.<name>" if get_origin(info.annotation) is dict else name
            found += _sections(sub, f"{path}.{step}" if path else step)
    return found


def config_reference() -> str:
    """docs/config.md: one table per mapping of config.yaml, its keys, types, defaults and meaning."""
    out = [HEADER]
    for path, model in _sections(NodeConfig, ""):
        out.append(f"\n## `{path or '(top level)'}`\n\n{_describe(model.__doc__)}\n")
        out.append("\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n")
        for name, info in model.model_fields.items():
            limits = _limits(info)
            kind = _type(info.annotation) + (f" ({limits})" if limits else "")
            kind = kind.replace("|", "\\|")  # a table cell: even a pipe in code ends it
            out.append(f"| `{name}` | {kind} | {_default(info)} | {_describe(info.description)} |\n")
    return "".join(out)


def sync_reference(path: Path, check: bool) -> bool:
    """Write docs/config.md, or with check only compare; returns whether it was already up to date."""
    text = config_reference()
    current = path.read_text() if path.exists() else None
    if not check and current != text:
        path.write_text(text)
    return current == text
