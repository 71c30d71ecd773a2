"""Whether this node serves a restic rest-server for its peers' mesh backups.

The node's config.yaml says it does (`maculaos.backup_server`), and the server must answer as a
rest-server before anyone is told: the agent advertises the URL on its Node only while a probe gets a
rest-server's answer, so the operator never assigns peers to a server that is down or never started.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from maculaos.host.config import HostConfigError
from maculaos.host.files import atomic_write
from maculaos.host.nodeconfig import DEFAULT_BACKUP_SERVER_PORT, BackupServerConfig, NodeConfig, read_node_config
from maculaos.host.systemd import Systemd

SECTION = "backup_server"
DEFAULT_PORT = DEFAULT_BACKUP_SERVER_PORT
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


@dataclass(frozen=True)
class ServerSetting:
    """What config.yaml asks for: a URL to advertise, or an error naming the key at fault."""

    url: str | None = None
    error: str | None = None
    authenticated: bool = False
    """Whether the server asks for htpasswd credentials (else anyone reaching it may use it)."""


def parse_section(config: NodeConfig) -> tuple[BackupServerConfig | None, str | None]:
    """(the section, None), (None, None) when there is none, or (None, what is wrong, naming the key)."""
    problem = config.problem(f"maculaos.{SECTION}")
    if problem is not None:
        return None, problem
    return config.maculaos.backup_server, None


def server_setting(config: NodeConfig, internal_ip: str | None) -> ServerSetting | None:
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


def _serving(config: NodeConfig) -> BackupServerConfig | None:
    """The section when config.yaml asks to serve and it is valid (the advertisement names any fault)."""
    parsed, _ = parse_section(config)
    return parsed if parsed is not None and parsed.enabled else None


def served_rule(config: NodeConfig) -> tuple[int, tuple[str, ...]] | None:
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


def served_port(config: NodeConfig) -> int | None:
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


def converge_service(host_root: Path, config: NodeConfig, systemd: Systemd,
                     states: Mapping[str, str] | None = None) -> bool:
    """Run the node's rest-server exactly while config.yaml asks for it: write its htpasswd (root-only),
    port and authentication mode, enable (and, live, start, or restart when any of them changed) the unit;
    disable (and stop) it otherwise. Returns whether anything changed. A bad section changes nothing (the
    advertisement and the mesh pass name the key). A host without the unit or the server (a sandbox, an
    image built without the tools profile) is left alone: the advertisement's probe then reports that
    nothing answers. `states`: the unit file states when the caller already asked systemctl for them."""
    if not (host_root / BINARY.lstrip("/")).exists():
        return False
    states = systemd.unit_file_states([SERVICE]) if states is None else states
    if SERVICE not in states:
        return False
    parsed, error = parse_section(config)
    if error:
        return False
    if parsed is None or not parsed.enabled:
        return bool(systemd.set_all_enabled({SERVICE: False}, states))
    rewritten = _write_secret(host_root / HTPASSWD, htpasswd_file(parsed.htpasswd))
    rewritten = atomic_write(host_root / ENVIRONMENT, service_environment(parsed.port, parsed.htpasswd is not None)) \
        or rewritten
    enabled = bool(systemd.set_all_enabled({SERVICE: True}, states))
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
        config = read_node_config(host_root)
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
