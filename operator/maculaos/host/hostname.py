"""This node's own hostname, set at every boot before the network, avahi and k3s start.

Every node boots the same image, so the image's name cannot be the node's: k3s names its Node after the
hostname (two nodes with one name collide) and mDNS renames clashing hosts. The name is config.yaml's
`maculaos.hostname` when it is set, else one made once per node from its machine id (the first NIC's
MAC when there is none), `macula-<8 hex>`, and kept in /var/lib/maculaos/hostname on the data partition:
the same name on every boot, a new one only after a factory reset (which wipes the data partition)."""

from __future__ import annotations

import hashlib
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from maculaos.errors import MaculaosError
from maculaos.host.config import HostConfigError, key_message, lookup, read_config
from maculaos.host.files import atomic_write

MADE_NAME = Path("var/lib/maculaos/hostname")
ETC_HOSTNAME = Path("etc/hostname")
ETC_HOSTS = Path("etc/hosts")
MACHINE_ID = Path("etc/machine-id")
NET_DEVICES = Path("sys/class/net")
PREFIX = "macula-"
# One DNS label, lowercase: a valid Kubernetes node name, mDNS host name and /etc/hostname.
LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL_RULE = "one DNS label: lowercase letters, digits and '-', 1-63 characters, not starting or ending with '-'"


class HostnameError(MaculaosError):
    """No name can be made (no machine id and no network device); the message says which were missing."""


@dataclass(frozen=True)
class Choice:
    name: str
    source: str
    """Where the name came from, in words for the console."""
    problem: str = ""
    """Why config.yaml's name was not used (a bad value), empty when nothing was wrong."""


def check_hostname(value: object) -> str:
    """A configured name, else ValueError naming the rule (NodeConfig and choose() share it)."""
    if not isinstance(value, str) or not LABEL.match(value):
        raise ValueError(f"{{key}} {value!r} is not used: it must be {LABEL_RULE}")
    return value


def made_from(identity: str) -> str:
    """macula-<8 hex>: a hash of the identity (the machine id is not to be shown as it is, systemd says)."""
    return PREFIX + hashlib.sha256(b"maculaos-hostname\0" + identity.encode()).hexdigest()[:8]


def _identity(host_root: Path) -> tuple[str, str]:
    """(identity, what it is): the machine id, else the MAC of the first network device with hardware."""
    try:
        machine_id = (host_root / MACHINE_ID).read_text().strip()
    except OSError:
        machine_id = ""
    if re.fullmatch(r"[0-9a-f]{32}", machine_id):
        return machine_id, "the machine id"
    devices = sorted(d for d in (host_root / NET_DEVICES).glob("*") if (d / "device").exists())
    for device in devices:
        try:
            mac = (device / "address").read_text().strip()
        except OSError:
            continue
        if mac and mac != "00:00:00:00:00:00":
            return mac, f"the MAC of {device.name}"
    raise HostnameError(f"no machine id in /{MACHINE_ID} and no network device with a MAC address")


def made_name(host_root: Path) -> tuple[str, str]:
    """This node's own name, made on its first boot and kept on the data partition; (name, source)."""
    kept = host_root / MADE_NAME
    try:
        name = kept.read_text().strip()
    except OSError:
        name = ""
    if LABEL.match(name):
        return name, f"kept in /{MADE_NAME}"
    identity, what = _identity(host_root)
    name = made_from(identity)
    atomic_write(kept, name + "\n")
    return name, f"made from {what}"


def choose(host_root: Path) -> Choice:
    """config.yaml's maculaos.hostname when it is valid, else the node's own made name. Reads the raw file
    with NodeConfig's check of the key: this runs at boot without pydantic."""
    problem = ""
    try:
        config = read_config(host_root)
        if not isinstance(config.get("maculaos") or {}, dict):
            raise HostConfigError("maculaos must be a mapping")
        configured = lookup(config, "maculaos.hostname")
    except HostConfigError as exc:
        configured, problem = None, f"config.yaml not read: {exc}"
    if configured not in (None, ""):
        try:
            return Choice(check_hostname(configured), "config.yaml maculaos.hostname")
        except ValueError as exc:
            problem = "config.yaml " + key_message("maculaos.hostname", str(exc))
    name, source = made_name(host_root)
    return Choice(name, source, problem)


def write_hosts(text: str, name: str) -> str:
    """/etc/hosts with exactly one 127.0.1.1 line naming the host (Debian's convention: sudo, hostname -f)."""
    lines = [line for line in text.splitlines() if not line.split()[:1] == ["127.0.1.1"]]
    at = next((i + 1 for i, line in enumerate(lines) if line.split()[:1] == ["127.0.0.1"]), 0)
    lines.insert(at, f"127.0.1.1\t{name}")
    return "\n".join(lines) + "\n"


def apply(host_root: Path, live: bool) -> tuple[Choice, bool]:
    """Write /etc/hostname and /etc/hosts (and set the running kernel's name when live); returns the
    choice and whether anything changed."""
    choice = choose(host_root)
    changed = atomic_write(host_root / ETC_HOSTNAME, choice.name + "\n")
    hosts = host_root / ETC_HOSTS
    old = hosts.read_text() if hosts.exists() else "127.0.0.1\tlocalhost\n"
    changed = atomic_write(hosts, write_hosts(old, choice.name)) or changed
    if live and socket.gethostname() != choice.name:
        socket.sethostname(choice.name)
        changed = True
    return choice, changed


def main(argv: list[str] | None = None) -> int:
    """`python3 -m maculaos.host.hostname [HOST_ROOT]`: what macula-hostname.service runs at boot (the
    running system's name is set only when HOST_ROOT is /)."""
    args = sys.argv[1:] if argv is None else argv
    host_root = Path(args[0]) if args else Path("/")
    try:
        choice, changed = apply(host_root, live=host_root == Path("/"))
    except (HostnameError, OSError) as exc:
        print(f"maculaos hostname: left as it was: {exc}", file=sys.stderr)
        return 1
    print(f"MACULAOS-HOSTNAME {choice.name} ({choice.source}{'' if changed else ', unchanged'})")
    if choice.problem:
        print(f"maculaos hostname: {choice.problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
