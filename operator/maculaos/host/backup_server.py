"""Whether this node serves a restic rest-server for its peers' mesh backups (seed 4.13.2/4.13.3).

The node's config.yaml says it does (`maculaos.backup_server`), and the server must answer as a
rest-server before anyone is told: the agent advertises the URL on its Node only while a probe gets a
rest-server's answer, so the operator never assigns peers to a server that is down or never started.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from maculaos.api.common import BACKUP_SERVER_PATTERN
from maculaos.host.config import HostConfigError, read_config
from maculaos.host.files import atomic_write
from maculaos.host.systemd import Systemd

SECTION = "backup_server"
DEFAULT_PORT = 8000
PROBE_TIMEOUT = 3.0
#: The image's unit running the Debian restic-rest-server over /var/lib/maculaos-backups (data partition).
SERVICE = "maculaos-backup-server.service"
BINARY = "/usr/bin/restic-rest-server"
#: Its listen address and authentication mode, written from config.yaml (the unit starts only when this
#: file exists).
ENVIRONMENT = Path("var/lib/maculaos/backup-server.env")
#: Who may use it: config.yaml's htpasswd lines, root-only; the unit gets a copy by LoadCredential=.
HTPASSWD = Path("var/lib/maculaos/backup-server.htpasswd")
HTPASSWD_MODE = 0o600
#: Users as rest-server accepts them (it silently ignores others; ASCII only here) and the hashes it can
#: check: bcrypt only (`htpasswd -B`); it also takes unsalted {SHA}, which is refused here as too weak.
HTPASSWD_USER = re.compile(r"[A-Za-z0-9@._-]+")
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
HTPASSWD_HINT = "make lines with `htpasswd -nB <user>` (apache2-utils)"


def check_htpasswd(text: str) -> str:
    """The htpasswd value when every line is `user:bcrypt-hash` (blank and # lines skipped), at least one
    user and no user twice; ValueError naming the line otherwise. rest-server itself would skip a bad line
    (or refuse the whole file) and every peer would get 401 without a word why."""
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, hashed = line.partition(":")
        if not colon or any(c.isspace() for c in line):
            raise ValueError(f"line {number}: expected user:hash with no spaces; {HTPASSWD_HINT}")
        if not HTPASSWD_USER.fullmatch(user):
            raise ValueError(f"line {number}: user {user!r} may only have letters, digits and @ . _ -")
        if not BCRYPT_HASH.fullmatch(hashed):
            raise ValueError(f"line {number}: the password of {user} is not a bcrypt hash ($2y$...): "
                             f"{HTPASSWD_HINT}")
        if user in seen:
            raise ValueError(f"line {number}: user {user} is already on line {seen[user]}")
        seen[user] = number
    if not seen:
        raise ValueError(f"has no user line; {HTPASSWD_HINT}, or remove the key to serve without "
                         "authentication")
    return text


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
    sources: list[str] = Field(default_factory=list, max_length=32)
    """Networks (CIDR) the firewall lets reach the port, e.g. the shop's LAN; empty lets in anyone who can
    route to the node."""
    htpasswd: str | None = Field(default=None, max_length=65536)
    """Who may use the server: htpasswd lines, user:bcrypt-hash (from `htpasswd -nB <user>`); Backups
    give user:password by target.mesh.credentialsSecretRef. Unset: anyone who reaches the port may read,
    delete or fill the repositories (served with --no-auth, with a warning)."""

    @field_validator("sources")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for number, network in enumerate(value):
            try:
                ipaddress.ip_network(network, strict=True)
            except ValueError as exc:
                raise ValueError(f"entry {number} ({network!r}) is not a network in CIDR form, such as "
                                 f"192.168.10.0/24: {exc}") from exc
        return value

    @field_validator("htpasswd")
    @classmethod
    def _htpasswd_lines(cls, value: str | None) -> str | None:
        return None if value is None else check_htpasswd(value)


@dataclass(frozen=True)
class ServerSetting:
    """What config.yaml asks for: a URL to advertise, or an error naming the key at fault."""

    url: str | None = None
    error: str | None = None
    authenticated: bool = False
    """Whether the server asks for htpasswd credentials (else anyone reaching it may use it)."""


def parse_section(config: dict[str, Any]) -> tuple[BackupServerConfig | None, str | None]:
    """(the section, None), (None, None) when there is none, or (None, what is wrong, naming the key)."""
    maculaos = config.get("maculaos")
    raw = maculaos.get(SECTION) if isinstance(maculaos, dict) else None
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        return None, f"maculaos.{SECTION} must be a mapping (url, port, enabled, htpasswd)"
    try:
        return BackupServerConfig.model_validate(raw), None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        return None, f"maculaos.{SECTION}.{where}: {err['msg'].removeprefix('Value error, ')}"


def server_setting(config: dict[str, Any], internal_ip: str | None) -> ServerSetting | None:
    """The setting, or None when the node is not configured to serve (no section, or enabled: false)."""
    parsed, error = parse_section(config)
    if error:
        return ServerSetting(error=error)
    if parsed is None or not parsed.enabled:
        return None
    authenticated = parsed.htpasswd is not None
    if parsed.url:
        return ServerSetting(url=parsed.url.rstrip("/"), authenticated=authenticated)
    if not internal_ip:
        return ServerSetting(error=f"maculaos.{SECTION}.url is not set and the Node has no InternalIP to build it "
                                   "from: set url to the address peers reach this node by")
    host = f"[{internal_ip}]" if ":" in internal_ip else internal_ip
    return ServerSetting(url=f"http://{host}:{parsed.port}", authenticated=authenticated)


def _serving(config: dict[str, Any]) -> BackupServerConfig | None:
    """The section when config.yaml asks to serve and it is valid (the advertisement names any fault)."""
    parsed, _ = parse_section(config)
    return parsed if parsed is not None and parsed.enabled else None


def served_rule(config: dict[str, Any]) -> tuple[int, tuple[str, ...]] | None:
    """The TCP port peers reach this node's rest-server on and the networks admitted to it (empty: any),
    when config.yaml asks to serve: the firewall opens it, so the one setting both serves and admits. The
    url's port when url is given (a proxy on this node may stand in front), else port; None when the node
    does not serve."""
    parsed = _serving(config)
    if parsed is None:
        return None
    port = parsed.port
    if parsed.url:
        parts = urllib.parse.urlsplit(parsed.url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # a port out of range
            return None
    return port, tuple(parsed.sources)


def served_port(config: dict[str, Any]) -> int | None:
    """served_rule's port alone."""
    rule = served_rule(config)
    return None if rule is None else rule[0]


def service_environment(port: int, authenticated: bool) -> str:
    """The unit's EnvironmentFile. ExecStart always names the htpasswd credential and appends an unbraced
    $AUTH, which systemd splits into words: empty (no words) leaves rest-server's default, authentication
    on; `--no-auth` turns it off. So a missing AUTH line fails closed."""
    auth = ("# AUTH empty: peers must give a user:password of maculaos.backup_server.htpasswd.\nAUTH=\n"
            if authenticated else
            "# WARNING: no maculaos.backup_server.htpasswd: anyone who reaches the port may read, delete or\n"
            "# fill the repositories.\nAUTH=--no-auth\n")
    return ("# Written by the MaculaOS agent from config.yaml maculaos.backup_server. Do not edit.\n"
            f"LISTEN=:{port}\n{auth}")


def htpasswd_file(htpasswd: str | None) -> str:
    """The credential file's content; the unit's LoadCredential= needs it to exist even with --no-auth."""
    if htpasswd is None:
        return "# no users: config.yaml has no maculaos.backup_server.htpasswd (the server runs with --no-auth)\n"
    return "# Written by the MaculaOS agent from config.yaml maculaos.backup_server.htpasswd. Do not edit.\n" + \
        "".join(f"{line.strip()}\n" for line in htpasswd.splitlines() if line.strip())


def _write_secret(path: Path, data: str) -> bool:
    """atomic_write at HTPASSWD_MODE, also tightening a file left readable by someone else."""
    changed = atomic_write(path, data, mode=HTPASSWD_MODE)
    if path.stat().st_mode & 0o777 != HTPASSWD_MODE:
        path.chmod(HTPASSWD_MODE)
        changed = True
    return changed


def converge_service(host_root: Path, config: dict[str, Any], systemd: Systemd) -> bool:
    """Run the node's rest-server exactly while config.yaml asks for it: write its htpasswd (root-only),
    port and authentication mode, enable (and, live, start, or restart when any of them changed) the unit;
    disable (and stop) it otherwise. Returns whether anything changed. A bad section changes nothing (the
    advertisement and the mesh pass name the key). A host without the unit or the server (a sandbox, an
    image built without the tools profile) is left alone: the advertisement's probe then reports that
    nothing answers."""
    if not (host_root / BINARY.lstrip("/")).exists() or not systemd.exists(SERVICE):
        return False
    parsed, error = parse_section(config)
    if error:
        return False
    if parsed is None or not parsed.enabled:
        return systemd.set_enabled(SERVICE, False)
    rewritten = _write_secret(host_root / HTPASSWD, htpasswd_file(parsed.htpasswd))
    rewritten = atomic_write(host_root / ENVIRONMENT, service_environment(parsed.port, parsed.htpasswd is not None)) \
        or rewritten
    enabled = systemd.set_enabled(SERVICE, True)
    if rewritten and not enabled and systemd.live:  # running with the old port or users: restart
        systemd.restart(SERVICE)
    return rewritten or enabled


def open_server_warning(url: str) -> str:
    return (f"the backup server at {url} runs without authentication: anyone who reaches it can read, "
            "delete or fill every peer's backups; set maculaos.backup_server.htpasswd in config.yaml "
            "(lines from `htpasswd -nB <user>`) and give the mesh Backups target.mesh.credentialsSecretRef")


def backup_server_warnings(host_root: Path) -> list[str]:
    """What the mesh pass should say about this node's backup server: a bad config section (nothing was
    changed), or a server open to anyone."""
    try:
        config = read_config(host_root)
    except HostConfigError:
        return []  # the mesh pass itself reports an unreadable config.yaml
    parsed, error = parse_section(config)
    if error:
        return [f"backup server unit and files left as they were, its port closed to peers: {error}"]
    if parsed is None or not parsed.enabled or parsed.htpasswd is not None:
        return []
    return [open_server_warning(parsed.url or f"port {parsed.port}")]


def _get_root(url: str, timeout: float) -> tuple[int, str, str] | str:
    """GET <url>/ without credentials: (status, reason, Allow header), or why nothing answered."""
    import http.client  # here, not at the top: the boot's apply imports this module and never probes
    import ssl

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
    return response.status, response.reason, allow


def probe_rest_server(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when a restic rest-server answers at url; otherwise what is wrong. A rest-server answers
    `GET /` with 405 (only POST creates repositories) or, with authentication on, 401."""
    from http import HTTPStatus  # here, not at the top: see _get_root

    answer = _get_root(url, timeout)
    if isinstance(answer, str):
        return answer
    status, reason, allow = answer
    if status == HTTPStatus.UNAUTHORIZED or (status == HTTPStatus.METHOD_NOT_ALLOWED and "POST" in allow):
        return None
    return f"{url} answers, but not as a restic rest-server (GET / gave {status} {reason})"


def asks_for_credentials(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the server at url refuses a request without credentials (401): what it does, whatever
    config.yaml says (an image whose unit predates authentication ignores the htpasswd)."""
    from http import HTTPStatus  # here, not at the top: see _get_root

    answer = _get_root(url, timeout)
    return not isinstance(answer, str) and answer[0] == HTTPStatus.UNAUTHORIZED
