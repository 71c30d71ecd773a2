"""Whether this node serves a restic rest-server for its peers' mesh backups (seed 4.13.2/4.13.3).

The node's config.yaml says it does (`maculaos.backup_server`), and the server must answer as a
rest-server before anyone is told: the agent advertises the URL on its Node only while a probe gets a
rest-server's answer, so the operator never assigns peers to a server that is down or never started.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from maculaos.api.backup import BACKUP_SERVER_PATTERN
from maculaos.host.files import atomic_write
from maculaos.host.systemd import Systemd

SECTION = "backup_server"
DEFAULT_PORT = 8000
PROBE_TIMEOUT = 3.0
#: The image's unit running the Debian restic-rest-server over /var/lib/maculaos-backups (data partition).
SERVICE = "maculaos-backup-server.service"
BINARY = "/usr/bin/restic-rest-server"
#: Its listen address, written from config.yaml (the unit starts only when this file exists).
ENVIRONMENT = Path("var/lib/maculaos/backup-server.env")


class BackupServerConfig(BaseModel):
    """maculaos.backup_server in config.yaml."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    """Advertise the server (false keeps the section but withdraws the node)."""
    url: str | None = Field(default=None, pattern=BACKUP_SERVER_PATTERN, max_length=2048)
    """How peers reach the server; default http://<the Node's InternalIP>:<port>."""
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    """The port the node's rest-server (maculaos-backup-server.service) listens on; peers use it too
    unless url says otherwise."""


@dataclass(frozen=True)
class ServerSetting:
    """What config.yaml asks for: a URL to advertise, or an error naming the key at fault."""

    url: str | None = None
    error: str | None = None


def server_setting(config: dict[str, Any], internal_ip: str | None) -> ServerSetting | None:
    """The setting, or None when the node is not configured to serve (no section, or enabled: false)."""
    raw = (config.get("maculaos") or {}).get(SECTION)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        return ServerSetting(error=f"maculaos.{SECTION} must be a mapping (url, port, enabled)")
    try:
        parsed = BackupServerConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        return ServerSetting(error=f"maculaos.{SECTION}.{where}: {err['msg']}")
    if not parsed.enabled:
        return None
    if parsed.url:
        return ServerSetting(url=parsed.url.rstrip("/"))
    if not internal_ip:
        return ServerSetting(error=f"maculaos.{SECTION}.url is not set and the Node has no InternalIP to build it "
                                   "from: set url to the address peers reach this node by")
    host = f"[{internal_ip}]" if ":" in internal_ip else internal_ip
    return ServerSetting(url=f"http://{host}:{parsed.port}")


def _serving(config: dict[str, Any]) -> BackupServerConfig | None:
    """The section when config.yaml asks to serve and it is valid (the advertisement names any fault)."""
    maculaos = config.get("maculaos")
    raw = maculaos.get(SECTION) if isinstance(maculaos, dict) else None
    if not isinstance(raw, dict):
        return None
    try:
        parsed = BackupServerConfig.model_validate(raw)
    except ValidationError:
        return None
    return parsed if parsed.enabled else None


def served_port(config: dict[str, Any]) -> int | None:
    """The TCP port peers reach this node's rest-server on, when config.yaml asks to serve: the firewall
    opens it, so the one setting both serves and admits. The url's port when url is given (a proxy on this
    node may stand in front), else port; None when the node does not serve."""
    parsed = _serving(config)
    if parsed is None:
        return None
    if parsed.url:
        parts = urllib.parse.urlsplit(parsed.url)
        try:
            return parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # a port out of range
            return None
    return parsed.port


def listen_port(config: dict[str, Any]) -> int | None:
    """The port the node's own rest-server unit listens on (`port`), when config.yaml asks to serve."""
    parsed = _serving(config)
    return parsed.port if parsed is not None else None


def service_environment(port: int) -> str:
    return ("# Written by the MaculaOS agent from config.yaml maculaos.backup_server.port. Do not edit.\n"
            f"LISTEN=:{port}\n")


def converge_service(host_root: Path, config: dict[str, Any], systemd: Systemd) -> bool:
    """Run the node's rest-server exactly while config.yaml asks for it: write its port, enable (and,
    live, start or restart) the unit; disable (and stop) it otherwise. Returns whether anything changed.
    A host without the unit or the server (a sandbox, an image built without the tools profile) is left
    alone: the advertisement's probe then reports that nothing answers."""
    if not (host_root / BINARY.lstrip("/")).exists() or not systemd.exists(SERVICE):
        return False
    port = listen_port(config)
    if port is None:
        return systemd.set_enabled(SERVICE, False)
    rewritten = atomic_write(host_root / ENVIRONMENT, service_environment(port))
    enabled = systemd.set_enabled(SERVICE, True)
    if rewritten and not enabled and systemd.live:  # running on the old port: move it
        systemd.restart(SERVICE)
    return rewritten or enabled


def probe_rest_server(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when a restic rest-server answers at url; otherwise what is wrong. A rest-server answers
    `GET /` with 405 (only POST creates repositories) or, with authentication on, 401."""
    parts = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":  # a liveness probe, no data: the peers' restic verifies the certificate
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", (parts.path.rstrip("/") or "") + "/")
        response = conn.getresponse()
        allow = response.getheader("Allow") or ""
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"no rest-server answers at {url}: {exc}"
    finally:
        conn.close()
    if response.status == 401 or (response.status == 405 and "POST" in allow):
        return None
    return f"{url} answers, but not as a restic rest-server (GET / gave {response.status} {response.reason})"
