"""The recovery boot's one step of its own (maculaos-recovery.service): let in the people the node's
config.yaml lets in, and tell the console how to reach the node.

Recovery mode runs the slot's read-only root with /etc and /var in RAM and leaves the data partition
unmounted, so that it can be checked and repaired (`maculaos recovery`). The SSH keys are on that
partition: it is mounted read-only without replaying its journal (`noload`: nothing is written to a file
system that may be damaged), config.yaml's `ssh_authorized_keys` are copied to a file in /run that the
recovery sshd drop-in names, and it is unmounted. A partition that does not mount, or a config without
keys, leaves the console only, and the console says so."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from maculaos.errors import MaculaosError
from maculaos.host import recovery
from maculaos.host.config import HostConfigError, config_file, read_config
from maculaos.host.files import atomic_write
from maculaos.host.logins import authorized_keys

#: Named by /etc/ssh/sshd_config.d/maculaos-recovery.conf (written into /etc by the initramfs).
KEYS_FILE = Path("/run/maculaos/recovery/authorized_keys")
ADDRESS_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Access:
    """What the recovery system lets in: the keys, and why there are none when there are none."""

    device: str | None
    keys: list[str]
    problem: str | None = None


def read_access(device: str | None) -> Access:
    """The configured keys from the data partition (read-only, journal not replayed), or the problem."""
    if device is None:
        return Access(None, [], f"no data partition labelled {recovery.DATA_LABEL}")
    with tempfile.TemporaryDirectory(prefix="maculaos-recovery-") as mount_dir:
        try:
            with recovery.mounted(Path(device), Path(mount_dir), read_only=True) as root:
                keys = authorized_keys(read_config(root), config_file(root))
        except (HostConfigError, OSError) as exc:
            return Access(device, [], str(exc))
        except MaculaosError as exc:
            return Access(device, [], f"{device} does not mount: {exc}")
    return Access(device, keys, None if keys else "config.yaml names no ssh_authorized_keys")


def write_keys(access: Access, keys_file: Path = KEYS_FILE) -> None:
    keys_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(keys_file, "".join(f"{key}\n" for key in access.keys), mode=0o600)


def addresses(wait: float = ADDRESS_WAIT_SECONDS) -> list[str]:
    """The node's IPv4 addresses (not loopback), waiting up to `wait` seconds for DHCP to give one."""
    deadline = time.monotonic() + wait
    while True:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True,
                             text=True, check=False).stdout
        found = [str(ipaddress.ip_interface(line.split()[3]).ip) for line in out.splitlines()
                 if len(line.split()) > 3]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(1)


def console_text(access: Access, found: list[str]) -> str:
    """What the console says: where to log in, and what is there to do."""
    lines = [f"MACULAOS-RECOVERY-READY address={','.join(found) or 'none'} keys={len(access.keys)}",
             "MaculaOS recovery mode: the data partition "
             f"{access.device or '(not found)'} is not mounted; `maculaos recovery status` says what to do."]
    if access.keys and found:
        lines.append(f"SSH: ssh root@{found[0]} with a key from config.yaml.")
    else:
        why = access.problem or "no network address"
        lines.append(f"No SSH login: {why}. This console is logged in as root.")
    return "\n".join(lines)


def main() -> int:
    """`python3 -m maculaos.host.recovery_boot`: what maculaos-recovery.service runs."""
    try:
        device: str | None = str(recovery.find_device(None))
    except recovery.RecoveryError:
        device = None
    access = read_access(device)
    try:
        write_keys(access)
    except OSError as exc:
        print(f"maculaos recovery: cannot write {KEYS_FILE}: {exc}", file=sys.stderr)
        access = Access(access.device, [], f"cannot write {KEYS_FILE}")
    print(console_text(access, addresses()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
