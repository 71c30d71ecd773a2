"""GRUB's environment block on a running node's ESP: where the one-shot flags for the next boot live
(`maculaos factory-reset`, `maculaos recovery reboot`), read by grub.cfg (maculaos.image.grub)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from maculaos.errors import MaculaosError

ESP_GRUB = Path("boot/efi/grub")
GRUBENV = ESP_GRUB / "grubenv"
GRUB_CFG = ESP_GRUB / "grub.cfg"


class GrubEnvError(MaculaosError):
    """The flag cannot be set on this node; says why and what to do instead."""


def editenv(host_root: Path, args: list[str], command: str = "grub-editenv", seen_as: Path | None = None) -> str:
    """grub-editenv on the node's environment block; its output. seen_as: where the editenv command sees
    host_root (the agent's runs in the node's mount namespace, where it is `/`); None: at host_root."""
    result = subprocess.run([command, str((seen_as or host_root) / GRUBENV), *args], capture_output=True, text=True,
                            check=False, timeout=30)
    if result.returncode != 0:
        raise GrubEnvError(f"grub-editenv {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def value(host_root: Path, name: str, command: str = "grub-editenv") -> str:
    """The variable's value, or "" when it is not set."""
    for line in editenv(host_root, ["list"], command).splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    return ""


def check_flag_known(host_root: Path, flag: str, what: str, instead: str) -> None:
    """Refuse unless this node boots through a MaculaOS ESP whose grub.cfg reads `flag`: `what` needs it;
    `instead` is what the person can do without it."""
    if not (host_root / GRUBENV).is_file():
        raise GrubEnvError(f"no GRUB environment at /{GRUBENV}: {what} needs a node booted from a MaculaOS disk "
                           f"({instead})")
    if flag not in (host_root / GRUB_CFG).read_text(errors="replace"):
        raise GrubEnvError(f"this node's /{GRUB_CFG} predates {what}: {instead}")
