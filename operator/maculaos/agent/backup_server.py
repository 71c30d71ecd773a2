"""The agent advertises its node's rest-server to the operator: the Node annotation
os.macula.io/backup-server=<URL> while config.yaml asks for it AND a rest-server answers there AND the
node's firewall admits its port (the agent's ruleset opens it: the one config setting does both), removed
otherwise; the Node condition MaculaBackupServer says which and why, and warns (ServingWithoutAuthentication)
while anyone who reaches the port may use the server. The agent is the annotation's only
writer, so a server that stopped is withdrawn within one resync."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maculaos.api.backup import BACKUP_SERVER_ANNOTATION
from maculaos.api.nodekeys import BACKUP_SERVER_CONDITION
from maculaos.host.backup_server import (
    asks_for_credentials,
    open_server_warning,
    probe_rest_server,
    served_port,
    server_setting,
)
from maculaos.host.config import HostConfigError
from maculaos.host.nodeconfig import read_node_config

CONDITION = BACKUP_SERVER_CONDITION


@dataclass(frozen=True)
class Advertisement:
    url: str | None
    """The annotation's value; None removes it."""
    condition: tuple[str, str, str] | None
    """(status, reason, message) of the Node condition; None leaves it unwritten."""


def internal_ip(node: Mapping[str, Any]) -> str | None:
    addresses = (node.get("status") or {}).get("addresses") or []
    return next((str(a["address"]) for a in addresses if a.get("type") == "InternalIP" and a.get("address")), None)


def advertisement(host_root: Path, node: Mapping[str, Any], firewall: Callable[[int], str | None],
                  probe: Callable[[str], str | None] = probe_rest_server,
                  guarded: Callable[[str], bool] = asks_for_credentials) -> Advertisement:
    """What the Node should say about this node's rest-server now. firewall(port) says why the node's
    loaded ruleset drops that TCP port, or None (host/firewall.tcp_port_blocked): a server that answers
    here but not to peers is not advertised. guarded(url) says whether the server really asks for
    credentials: the warning follows what it does, not only what config.yaml says."""
    conditions = (node.get("status") or {}).get("conditions") or []
    had_condition = any(c.get("type") == CONDITION for c in conditions)
    try:
        config = read_node_config(host_root)
        setting = server_setting(config, internal_ip(node))
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
    port = served_port(config)
    blocked = firewall(port) if port is not None else None
    if blocked:
        return Advertisement(None, ("False", "Firewalled", (
            f"rest-server answers at {setting.url} on this node, but {blocked}: peers cannot reach it; not "
            "advertised (the agent opens the port with its next firewall pass; if it stays, look for the "
            "MeshRole entry's error)")))
    serving = f"rest-server answers at {setting.url}; advertised as {BACKUP_SERVER_ANNOTATION}"
    if not guarded(setting.url):
        warning = (f"maculaos.backup_server.htpasswd is set, but the server at {setting.url} answers without "
                   "credentials: anyone who reaches it can read, delete or fill every peer's backups (an image "
                   "whose unit predates authentication ignores the htpasswd: upgrade the node)"
                   if setting.authenticated else open_server_warning(setting.url))
        return Advertisement(setting.url, ("True", "ServingWithoutAuthentication", f"{serving}; warning: {warning}"))
    users = ", for the users of maculaos.backup_server.htpasswd" if setting.authenticated else ""
    return Advertisement(setting.url, ("True", "Serving", f"{serving}; it asks for credentials{users}"))
