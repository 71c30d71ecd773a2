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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from maculaos.api.backup import BACKUP_SERVER_PATTERN

SECTION = "backup_server"
DEFAULT_PORT = 8000
PROBE_TIMEOUT = 3.0


class BackupServerConfig(BaseModel):
    """maculaos.backup_server in config.yaml."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    """Advertise the server (false keeps the section but withdraws the node)."""
    url: str | None = Field(default=None, pattern=BACKUP_SERVER_PATTERN, max_length=2048)
    """How peers reach the server; default http://<the Node's InternalIP>:<port>."""
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    """The server's port when url is not given."""


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
