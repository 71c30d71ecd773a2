"""Who may log in: the login user's SSH keys from config.yaml's `ssh_authorized_keys`, and
its console password from `password_hash`.

The image ships no password, no key and no host keys: a node is reached with the keys its provisioner
put in config.yaml (the file is root's alone). Both are managed: authorized_keys holds exactly the
configured keys, and the password is the configured hash or locked, so removing either from config.yaml
revokes it. A password is only ever a crypt(3) hash (no plaintext passwords in config); a
person at the node's keyboard needs it when the network is down."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import re
from pathlib import Path
from typing import Any

from maculaos.host.config import HostConfigError, key_message
from maculaos.host.files import atomic_write

KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})
#: crypt(3) hashes of the methods Debian's libcrypt offers for new passwords: yescrypt (mkpasswd's default),
#: gost-yescrypt, scrypt, bcrypt, SHA-512 and SHA-256 (`openssl passwd -6`).
PASSWORD_HASH = re.compile(r"^\$(y|gy|7|2b|6|5)\$[./A-Za-z0-9$=,-]{8,}$")
#: The shadow field of a user without a password (as the image ships it: `passwd --lock`).
LOCKED = "!"
HEADER = "# Managed by MaculaOS from ssh_authorized_keys in /var/lib/maculaos/config.yaml: edit that file.\n"


def check_ssh_key(key: object) -> str:
    """One configured public key, normalised ("TYPE BASE64 [comment]" on one line); ValueError says what
    is wrong (NodeConfig and authorized_keys() share it)."""
    if not isinstance(key, str) or "\n" in key.strip() or "\r" in key:
        raise ValueError("must be one line of text (an OpenSSH public key)")
    words = key.split()
    if len(words) < 2 or words[0] not in KEY_TYPES:
        raise ValueError(f"not an OpenSSH public key (expected one of {', '.join(sorted(KEY_TYPES))} then the key)")
    try:
        blob = base64.b64decode(words[1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the key is not base64: {exc}") from exc
    if not blob.startswith(len(words[0]).to_bytes(4, "big") + words[0].encode()):
        raise ValueError(f"the key's data is not a {words[0]} key")
    return " ".join(words)


def check_password_hash(value: object) -> str:
    """A crypt(3) hash, else ValueError (a plaintext password is refused, and not echoed)."""
    if not isinstance(value, str) or not PASSWORD_HASH.fullmatch(value):
        raise ValueError("{key} must be a crypt(3) hash such as `mkpasswd -m yescrypt` or `openssl passwd -6` "
                         "print ($y$..., $6$...); a password itself is never accepted")
    return value


def authorized_keys(config: dict[str, Any], source: Path) -> list[str]:
    """The configured public keys, each checked; a bad one raises HostConfigError naming its index, and
    nothing is written. Reads the raw file: node-info's boot entry point runs without pydantic."""
    keys = config.get("ssh_authorized_keys") or []
    if not isinstance(keys, list):
        raise HostConfigError(f"{source}: ssh_authorized_keys must be a list of public keys")
    checked = []
    for index, key in enumerate(keys):
        try:
            checked.append(check_ssh_key(key))
        except ValueError as exc:
            raise HostConfigError(f"{source}: {key_message(f'ssh_authorized_keys[{index}]', str(exc))}") from exc
    return checked


def _account(host_root: Path, user: str) -> tuple[int, int, Path]:
    for line in (host_root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] == user:
            return int(fields[2]), int(fields[3]), Path(fields[5])
    raise HostConfigError(f"no user {user!r} in {host_root / 'etc/passwd'}")


def write_authorized_keys(host_root: Path, keys: list[str], user: str) -> bool:
    """~user/.ssh/authorized_keys = keys, as authorized_keys() checked them (0600, owned by the user);
    returns whether it changed."""
    uid, gid, home = _account(host_root, user)
    ssh_dir = host_root / home.relative_to("/") / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = ssh_dir / "authorized_keys"
    changed = atomic_write(target, HEADER + "".join(f"{k}\n" for k in keys), mode=0o600)
    if os.geteuid() == 0:
        for path in (ssh_dir, target):
            os.chown(path, uid, gid)
    return changed


def password_field(config: dict[str, Any], source: Path) -> str:
    """The login user's shadow password field: config.yaml's password_hash, or locked without one. A value
    that is not a crypt hash raises HostConfigError."""
    value = config.get("password_hash")
    if value is None:
        return LOCKED
    try:
        return check_password_hash(value)
    except ValueError as exc:
        raise HostConfigError(f"{source}: {key_message('password_hash', str(exc))}") from exc


def write_password(host_root: Path, field: str, user: str) -> bool:
    """Set user's password field (as password_field() gave it) in /etc/shadow (other users and fields
    untouched; the date of the last change is today's when it changes); returns whether it changed. A host
    without a shadow file (a sandbox) is left alone unless a password is asked for."""
    shadow = host_root / "etc/shadow"
    if not shadow.exists():
        if field == LOCKED:
            return False
        raise HostConfigError(f"password_hash: {shadow} does not exist")
    lines = shadow.read_text().splitlines(keepends=True)
    for index, line in enumerate(lines):
        fields = line.rstrip("\n").split(":")
        if fields[0] != user or len(fields) < 3:
            continue
        if fields[1] == field:
            return False
        fields[1], fields[2] = field, str((dt.date.today() - dt.date(1970, 1, 1)).days)
        lines[index] = ":".join(fields) + "\n"
        stat = shadow.stat()
        atomic_write(shadow, "".join(lines), mode=stat.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(shadow, stat.st_uid, stat.st_gid)
        return True
    raise HostConfigError(f"password_hash: no user {user!r} in {shadow}")
