"""The agent advertises its node's rest-server to the operator: the Node annotation
os.macula.io/backup-server=<URL> while config.yaml asks for it AND a rest-server answers there, removed
otherwise; the Node condition MaculaBackupServer says which and why. The agent is the annotation's only
writer, so a server that stopped is withdrawn within one resync."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maculaos.api.backup import BACKUP_SERVER_ANNOTATION
from maculaos.host.backup_server import probe_rest_server, server_setting
from maculaos.host.config import HostConfigError, read_config

CONDITION = "MaculaBackupServer"


@dataclass(frozen=True)
class Advertisement:
    url: str | None
    """The annotation's value; None removes it."""
    condition: tuple[str, str, str] | None
    """(status, reason, message) of the Node condition; None leaves it unwritten."""


def internal_ip(node: Mapping[str, Any]) -> str | None:
    addresses = (node.get("status") or {}).get("addresses") or []
    return next((str(a["address"]) for a in addresses if a.get("type") == "InternalIP" and a.get("address")), None)


def advertisement(host_root: Path, node: Mapping[str, Any],
                  probe: Callable[[str], str | None] = probe_rest_server) -> Advertisement:
    """What the Node should say about this node's rest-server now."""
    conditions = (node.get("status") or {}).get("conditions") or []
    had_condition = any(c.get("type") == CONDITION for c in conditions)
    try:
        setting = server_setting(read_config(host_root), internal_ip(node))
    except HostConfigError as exc:
        return Advertisement(None, ("False", "ConfigInvalid", f"not advertised: {exc}"))
    if setting is None:
        quiet = None if not had_condition else ("False", "NotConfigured", "config.yaml has no maculaos.backup_server")
        return Advertisement(None, quiet)
    if setting.error or not setting.url:
        return Advertisement(None, ("False", "ConfigInvalid", f"not advertised: {setting.error}"))
    error = probe(setting.url)
    if error:
        return Advertisement(None, ("False", "NotAnswering", f"{error}; not advertised to peers"))
    return Advertisement(setting.url, ("True", "Serving", f"rest-server answers at {setting.url}; "
                                                          f"advertised as {BACKUP_SERVER_ANNOTATION}"))
