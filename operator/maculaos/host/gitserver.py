"""The node's git server (seed 4.9.1, issue #19): git's own smart-HTTP backend (`git http-backend`) behind
Debian's lighttpd, configured from config.yaml's `maculaos.git_server`.

The seed names soft-serve; the Go module proxy refuses it, so git http-backend stands in, with
soft-serve's contract: one port (HTTP, soft-serve's 23232 by default), bare repositories under one root
(http://<node>:<port>/<name>.git), and htpasswd users who may push. Anything that keeps that contract
can replace the unit. Pushes need a user of htpasswd (git http-backend enables receive-pack only for an
authenticated user, so a server without users is read-only); reads are open unless anonymous_read is
false. The unit runs as www-data (Debian's fixed uid 33), never root: it faces the network.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from maculaos.host.config import HostConfigError
from maculaos.host.files import atomic_write
from maculaos.host.nodeconfig import GitServerConfig, NodeConfig, read_node_config
from maculaos.host.systemd import Systemd

SECTION = "git_server"
SERVICE = "maculaos-git-server.service"
SYNC_SERVICE = "maculaos-git-sync.service"
SYNC_TIMER = "maculaos-git-sync.timer"
LIGHTTPD = "/usr/sbin/lighttpd"
HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
USER = "www-data"
#: Rendered from config.yaml (the unit starts only when the configuration exists).
LIGHTTPD_CONFIG = Path("var/lib/maculaos/git-server/lighttpd.conf")
#: Who may push: config.yaml's htpasswd lines, root-only; the unit gets a copy by LoadCredential=.
HTPASSWD = Path("var/lib/maculaos/git-server/htpasswd")
HTPASSWD_MODE = 0o600
UNIT_DIR = Path("etc/systemd/system")
MACULAOS = "/usr/bin/maculaos"


@dataclass(frozen=True)
class ServerFiles:
    """Everything the server is made of, rendered: file path (relative to the host root) -> content."""

    files: Mapping[Path, str]
    units: tuple[str, ...]


def _auth_block(realm: str) -> str:
    return f'auth.require = ("" => ("method" => "basic", "realm" => "{realm}", "require" => "valid-user"))'


def render_lighttpd_config(port: int, root: str, users: bool, anonymous_read: bool,
                           bind: str = "0.0.0.0", htpasswd: str = 'env.CREDENTIALS_DIRECTORY + "/htpasswd"') -> str:
    """lighttpd's configuration: every URL goes to git http-backend with the repositories' root; with
    users, pushes (receive-pack, both its advertisement and the pack itself) need one of them, and so does
    every request when anonymous_read is false. htpasswd: a lighttpd expression for the file's path (the
    unit's credential by default)."""
    lines = [
        "# Written by the MaculaOS agent from config.yaml maculaos.git_server. Do not edit.",
        # mod_auth before mod_cgi: lighttpd checks credentials before it hands a request to a CGI.
        'server.modules = ("mod_access", "mod_alias", "mod_setenv", "mod_auth", "mod_authn_file", "mod_cgi")',
        f"server.port = {port}",
        f'server.bind = "{bind}"',
        f'server.document-root = "{root}"',
        'server.tag = "maculaos-git"',
        f'alias.url = ("/" => "{HTTP_BACKEND}/")',
        'cgi.assign = ("" => "")',
        f'setenv.set-environment = ("GIT_PROJECT_ROOT" => "{root}", "GIT_HTTP_EXPORT_ALL" => "1")',
    ]
    if users:
        lines += ['auth.backend = "htpasswd"', f"auth.backend.htpasswd.userfile = {htpasswd}"]
        if anonymous_read:
            lines += ['$HTTP["querystring"] =~ "(^|&)service=git-receive-pack(&|$)" {',
                      f"  {_auth_block('git push')}", "}",
                      '$HTTP["url"] =~ "/git-receive-pack$" {', f"  {_auth_block('git push')}", "}"]
        else:
            lines.append(_auth_block("git"))
    return "\n".join(lines) + "\n"


def render_server_unit(root: str) -> str:
    """The server's unit: lighttpd in the foreground as www-data; the root is made and handed to www-data
    first (the sync and the agent may have written into it as root)."""
    return f"""# Written by the MaculaOS agent from config.yaml maculaos.git_server. Do not edit.
[Unit]
Description=MaculaOS git server (git http-backend behind lighttpd)
After=network-online.target
Wants=network-online.target
ConditionPathExists=/{LIGHTTPD_CONFIG}

[Service]
User={USER}
Group={USER}
ExecStartPre=+/usr/bin/install -d -o {USER} -g {USER} -m 0750 {root}
ExecStartPre=+/usr/bin/chown -R {USER}:{USER} {root}
ExecStart={LIGHTTPD} -D -f /{LIGHTTPD_CONFIG}
LoadCredential=htpasswd:/{HTPASSWD}
Restart=on-failure
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={root}

[Install]
WantedBy=multi-user.target
"""


def _unit_word(text: str) -> str:
    """text as one word of a unit's command line: % is systemd's specifier sign (a URL's %20 would be
    expanded), so it is doubled; the URL's check already refuses spaces and quotes are not special in it."""
    return text.replace("%", "%%")


def render_sync_units(section: GitServerConfig) -> dict[str, str]:
    """The upstream sync's service and timer (empty without an upstream). The service runs as the
    server's user, so what it fetches stays writable by the server."""
    upstream = section.upstream
    if upstream is None:
        return {}
    push = " --push-upstream" if upstream.push_upstream else ""
    repository = f"{section.root}/{upstream.repository}.git"
    return {
        SYNC_SERVICE: f"""# Written by the MaculaOS agent from config.yaml maculaos.git_server.upstream. Do not edit.
[Unit]
Description=MaculaOS git server: mirror the upstream repository
After=network-online.target {SERVICE}

[Service]
Type=oneshot
User={USER}
Group={USER}
ExecStartPre=+/usr/bin/install -d -o {USER} -g {USER} -m 0750 {section.root}
ExecStartPre=+/usr/bin/chown -R {USER}:{USER} {section.root}
ExecStart={MACULAOS} gitops sync --repository {repository} --upstream {_unit_word(upstream.url)}{push}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
ReadWritePaths={section.root}
""",
        SYNC_TIMER: f"""# Written by the MaculaOS agent from config.yaml maculaos.git_server.upstream. Do not edit.
[Unit]
Description=MaculaOS git server: mirror the upstream repository every {upstream.interval_seconds} s

[Timer]
OnBootSec=60
OnUnitActiveSec={upstream.interval_seconds}
RandomizedDelaySec={min(30, upstream.interval_seconds // 4)}

[Install]
WantedBy=timers.target
""",
    }


def htpasswd_file(htpasswd: str | None) -> str:
    """The credential file (LoadCredential= needs it to exist even without users)."""
    if htpasswd is None:
        return "# no users: config.yaml has no maculaos.git_server.htpasswd (nobody may push)\n"
    return "# Written by the MaculaOS agent from config.yaml maculaos.git_server.htpasswd. Do not edit.\n" + \
        "".join(f"{line.strip()}\n" for line in htpasswd.splitlines() if line.strip())


def server_files(section: GitServerConfig) -> ServerFiles:
    """Every file of the server and its sync, rendered from the section."""
    files = {
        LIGHTTPD_CONFIG: render_lighttpd_config(section.port, section.root, section.htpasswd is not None,
                                                section.anonymous_read),
        HTPASSWD: htpasswd_file(section.htpasswd),
        UNIT_DIR / SERVICE: render_server_unit(section.root),
    }
    sync = render_sync_units(section)
    files.update({UNIT_DIR / name: text for name, text in sync.items()})
    return ServerFiles(files=files, units=(SERVICE, *([SYNC_TIMER] if sync else [])))


def ensure_repository(path: Path, branch: str = "main") -> bool:
    """A bare repository at path (made when missing); returns whether it was made."""
    if (path / "HEAD").exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "--quiet", "--bare", f"--initial-branch={branch}", str(path)],
                   check=True, capture_output=True, text=True)
    return True


def git_section(config: NodeConfig) -> tuple[GitServerConfig | None, str | None]:
    """(the section, None), (None, None) when there is none, or (None, what is wrong, naming the key)."""
    problem = config.problem(f"maculaos.{SECTION}")
    if problem is not None:
        return None, problem
    section, backup = config.maculaos.git_server, config.maculaos.backup_server
    if section is not None and backup is not None and backup.enabled and backup.port == section.port:
        return None, (f"maculaos.{SECTION}.port {section.port} is the backup server's port "
                      "(maculaos.backup_server.port): choose another")
    return section, None


def served_port(config: NodeConfig) -> int | None:
    """The port the firewall must admit for the server: config.yaml's, while it asks to serve and is valid."""
    section, _ = git_section(config)
    return section.port if section is not None and section.enabled else None


def _missing_programs(host_root: Path) -> list[str]:
    """The server's programs this host lacks (an image built before the server has neither)."""
    return [p for p in (LIGHTTPD, HTTP_BACKEND) if not (host_root / p.lstrip("/")).exists()]


def converge_git_server(host_root: Path, config: NodeConfig, systemd: Systemd,
                        states: Mapping[str, str] | None = None) -> bool:
    """Write the server's files and run its units exactly while config.yaml asks; returns whether anything
    changed. A bad section changes nothing (its problem names the key); a host without lighttpd or
    git http-backend (an image built before the server) is left alone. `states`: the unit file states of
    SERVICE and SYNC_TIMER when the caller already asked systemctl (used only to stop: units written now
    are asked for again)."""
    if _missing_programs(host_root):
        return False
    section, error = git_section(config)
    if error:
        return False
    all_units = (SERVICE, SYNC_TIMER)
    if section is None or not section.enabled:
        return bool(systemd.set_all_enabled(dict.fromkeys(all_units, False), states))
    rendered = server_files(section)
    changed = False
    for path, text in rendered.files.items():
        secret = path == HTPASSWD
        changed = atomic_write(host_root / path, text, mode=HTPASSWD_MODE if secret else 0o644) or changed
    names = [*section.repositories, *([section.upstream.repository] if section.upstream else [])]
    for name in dict.fromkeys(names):
        changed = ensure_repository(host_root / section.root.lstrip("/") / f"{name}.git") or changed
    if changed:
        systemd.daemon_reload()
    wanted = {unit: unit in rendered.units for unit in all_units}
    enabled = bool(systemd.set_all_enabled(wanted))
    if changed and not enabled and systemd.live:  # running with the old port, users or interval: restart
        for unit in rendered.units:
            systemd.restart(unit)
    return changed or enabled


def git_server_warnings(host_root: Path) -> list[str]:
    """What the mesh pass and the boot's apply should say about the git server: a bad section (nothing
    was changed), or a server asked for on an image that does not carry it."""
    try:
        config = read_node_config(host_root)
    except HostConfigError:
        return []  # the mesh pass itself reports an unreadable config.yaml
    section, error = git_section(config)
    if error:
        return [f"git server files and units left as they were: {error}"]
    missing = _missing_programs(host_root)
    if section is not None and section.enabled and missing:
        return [f"maculaos.git_server is set but this image has no git server ({', '.join(missing)} missing)"]
    return []
