"""The node's own configuration, /var/lib/maculaos/config.yaml: read it, and replace one section of it
atomically while leaving every other section as it was.

The raw file only, without pydantic: the boot's lean entry points (hostname, node-info) read it here.
Everything else reads it typed through host/nodeconfig.py (NodeConfig), which says what each key means."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from maculaos.errors import MaculaosError
from maculaos.host.files import atomic_write

CONFIG_PATH = Path("var/lib/maculaos/config.yaml")

# libyaml's parser when present (it is in PyYAML's wheels): the agent reads this file on every pass.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class HostConfigError(MaculaosError):
    """The config file cannot be used as it is; the message names the file and what is wrong."""


def config_file(host_root: Path) -> Path:
    return host_root / CONFIG_PATH


def key_message(key: str, message: str) -> str:
    """A problem named by its key path: a message holding `{key}` places it (`{key} must be true or
    false`), any other follows it after a colon. One rule for NodeConfig and the lean readers."""
    return message.replace("{key}", key) if "{key}" in message else f"{key}: {message}"


def lookup(config: dict[str, Any], path: str) -> Any:
    """The value at a dotted key path (maculaos.mesh.realm), None when any step is missing or not a
    mapping: the lean readers' tolerant walk."""
    value: Any = config
    for step in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def read_config(host_root: Path) -> dict[str, Any]:
    """The parsed config; an absent file is an empty config, an unreadable or malformed one an error."""
    path = config_file(host_root)
    if not path.exists():
        return {}
    try:
        data = yaml.load(path.read_text(), Loader=SafeLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise HostConfigError(f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise HostConfigError(f"{path} is not valid YAML, left untouched: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HostConfigError(f"{path} must hold a mapping at the top, found {type(data).__name__}")
    return data


def write_maculaos_section(host_root: Path, section: str, value: dict[str, Any] | None) -> bool:
    """Set (or with None remove) maculaos.<section>; returns whether the file changed."""
    return write_maculaos_sections(host_root, {section: value})


def write_maculaos_sections(host_root: Path, values: Mapping[str, dict[str, Any] | None]) -> bool:
    """Set (or with None remove) each maculaos.<section> given, in one atomic write; returns whether the
    file changed (not written when nothing did)."""
    return write_keys(host_root, {f"maculaos.{section}": value for section, value in values.items()})


def write_keys(host_root: Path, values: Mapping[str, object]) -> bool:
    """Set (or with None remove: a key written as null too) each dotted key (maculaos.timezone,
    password_hash) in one atomic write, every other key left as it was; returns whether the file changed
    (not written when nothing did). The one writer: write_maculaos_sections is its maculaos.<section> case."""
    config = read_config(host_root)
    changed = False
    for path, value in values.items():
        *parents, last = path.split(".")
        mapping: Any = config
        for step in parents:
            mapping = mapping.setdefault(step, {})
            if not isinstance(mapping, dict):
                raise HostConfigError(f"{config_file(host_root)}: {step} must be a mapping")
        if value is None:
            if last in mapping:
                del mapping[last]
                changed = True
        elif mapping.get(last) != value:
            mapping[last] = value
            changed = True
    if not changed:
        return False
    return atomic_write(config_file(host_root), yaml.dump(config, Dumper=SafeDumper, sort_keys=False), mode=0o600)
