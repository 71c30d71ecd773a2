"""What a node says about itself to people and to its LAN: version, mesh roles and realm, from
/etc/maculaos/build-info and /var/lib/maculaos/config.yaml.

config.yaml is root's alone (0600: it may hold secrets); the login screen runs as the login user, so
`maculaos node-info --write` (root, at boot and whenever config.yaml changes) writes a world-readable
summary to /run/maculaos/node-info and the avahi service file advertising `_macula._tcp`, and puts the
configured SSH keys in the login user's authorized_keys (host/logins.py).

It reads the raw file (host/config.py), not NodeConfig: it runs at boot, where importing pydantic costs
minutes under emulation; its keys are checked by the same functions NodeConfig uses."""

from __future__ import annotations

import html
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maculaos.host.config import HostConfigError, config_file, lookup, read_config
from maculaos.host.files import atomic_write
from maculaos.host.hostname import LABEL, MADE_NAME
from maculaos.host.logins import authorized_keys, password_field, write_authorized_keys, write_password

BUILD_INFO = Path("etc/maculaos/build-info")
SUMMARY = Path("run/maculaos/node-info")
AVAHI_SERVICE = Path("etc/avahi/services/macula.service")
# The Kubernetes API port of a k3s server (what a joining node looks for).
SERVICE_PORT = 6443
ROLE_ORDER = ("bootstrap", "gateway")


@dataclass(frozen=True)
class NodeInfo:
    version: str
    arch: str
    realm: str           # "" when config.yaml has no mesh section
    roles: tuple[str, ...]
    k3s: bool
    user: str = "macula"  # the login user (LOGIN_USER in build-info)
    node_id: str = ""     # the node's own made name (macula-<8 hex>), kept when config.yaml renames it

    def summary(self) -> str:
        """Shell-sourceable KEY=value lines (the login screen and motd read them with `.`)."""
        values = {"MACULAOS_VERSION": self.version, "MACULAOS_ARCH": self.arch,
                  "MACULAOS_REALM": self.realm or "not configured", "MACULAOS_ROLES": ",".join(self.roles),
                  "MACULAOS_K3S": "included" if self.k3s else "not included"}
        return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())

    def avahi_service(self, hostname_wildcard: str = "%h") -> str:
        """An avahi service group for `_macula._tcp` with the node's version, roles and realm as TXT."""
        txt = [f"version={self.version}", f"roles={','.join(self.roles)}", f"realm={self.realm}",
               f"k3s={'yes' if self.k3s else 'no'}", *([f"node-id={self.node_id}"] if self.node_id else [])]
        records = "".join(f"    <txt-record>{html.escape(t)}</txt-record>\n" for t in txt)
        return ("<?xml version=\"1.0\" standalone='no'?>\n"
                "<!DOCTYPE service-group SYSTEM \"avahi-service.dtd\">\n"
                "<!-- Written by maculaos node-info from config.yaml at boot and on change: "
                "edits are overwritten. -->\n"
                "<service-group>\n"
                f"  <name replace-wildcards=\"yes\">MaculaOS {html.escape(hostname_wildcard)}</name>\n"
                "  <service>\n"
                "    <type>_macula._tcp</type>\n"
                f"    <port>{SERVICE_PORT}</port>\n"
                f"{records}"
                "  </service>\n"
                "</service-group>\n")


def _build_info(host_root: Path) -> dict[str, str]:
    path = host_root / BUILD_INFO
    info: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                words = shlex.split(value)
                info[key.strip()] = words[0] if words else ""
    return info


def read_node_info(host_root: Path, config: dict[str, Any] | None = None) -> NodeInfo:
    """The node's facts; a malformed config.yaml raises HostConfigError (nothing is written then)."""
    info = _build_info(host_root)
    config = read_config(host_root) if config is None else config
    roles = ("peer", *(r for r in ROLE_ORDER if lookup(config, f"maculaos.mesh.roles.{r}") is True))
    realm = lookup(config, "maculaos.mesh.realm")
    return NodeInfo(version=info.get("MACULAOS_VERSION", "unknown"), arch=info.get("MACULAOS_ARCH", "unknown"),
                    realm=realm if isinstance(realm, str) else "", roles=roles,
                    k3s=info.get("K3S", "").startswith("included"), user=info.get("LOGIN_USER", "macula"),
                    node_id=made_node_id(host_root))


def made_node_id(host_root: Path) -> str:
    """The name the node made for itself on its first boot (host/hostname.py keeps it on the data
    partition): stable across renames, so `maculaos discover` tells nodes apart. Empty before it exists."""
    try:
        made = (host_root / MADE_NAME).read_text().strip()
    except OSError:
        return ""
    return made if LABEL.match(made) else ""


def write_node_info(host_root: Path) -> list[Path]:
    """Write the summary, the avahi service file and the login user's SSH keys and password; returns the
    files that changed. Everything is checked before anything is written."""
    config = read_config(host_root)
    info = read_node_info(host_root, config)
    keys = authorized_keys(config, config_file(host_root))  # both checked before either is written
    password = password_field(config, config_file(host_root))
    changed = []
    if write_authorized_keys(host_root, keys, info.user):
        changed.append(host_root / "home" / info.user / ".ssh/authorized_keys")
    if write_password(host_root, password, info.user):
        changed.append(host_root / "etc/shadow")
    for rel, text in ((SUMMARY, info.summary()), (AVAHI_SERVICE, info.avahi_service())):
        path = host_root / rel
        if atomic_write(path, text, mode=0o644):
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    """`python3 -m maculaos.host.nodeinfo [HOST_ROOT]`: what macula-node-info.service runs at boot. The
    same as `maculaos node-info --write`, without the CLI's imports (pydantic): seconds under emulation."""
    args = sys.argv[1:] if argv is None else argv
    host_root = Path(args[0]) if args else Path("/")
    try:
        for path in write_node_info(host_root):
            print(f"wrote {path}")
    except (HostConfigError, OSError) as exc:
        print(f"maculaos node-info: nothing written: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
