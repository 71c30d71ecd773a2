"""Factory reset from a running node (seed 4.10.2): a one-shot flag in GRUB's environment, so no one needs
to be at the console. grub.cfg passes the flag to the next normal boot; the initramfs then wipes the data
partition's configuration and state (renames first, so a power cut leaves a node that finishes the reset
on the next boot, never a half-reset one); maculaos-factory-reset-done.service clears the flag once the
reset boot is up. Until then every boot resets again, which is safe: the reset is idempotent."""

from __future__ import annotations

import subprocess
from pathlib import Path

from maculaos.errors import MaculaosError

ESP_GRUB = Path("boot/efi/grub")
GRUBENV = ESP_GRUB / "grubenv"
GRUB_CFG = ESP_GRUB / "grub.cfg"
#: The GRUB environment variable grub.cfg reads: keep-data (keeps /var/lib/data) or all.
FLAG = "FACTORY_RESET"


class FactoryResetError(MaculaosError):
    """The reset cannot be scheduled on this node; says why and what to do instead."""


def _editenv(host_root: Path, args: list[str], editenv: str, seen_as: Path | None = None) -> str:
    """grub-editenv on the node's environment block; its output. seen_as: where the editenv command sees
    host_root (the agent's runs in the node's mount namespace, where it is `/`); None: at host_root."""
    result = subprocess.run([editenv, str((seen_as or host_root) / GRUBENV), *args], capture_output=True, text=True,
                            check=False, timeout=30)
    if result.returncode != 0:
        raise FactoryResetError(f"grub-editenv {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def _check_boot_loader(host_root: Path) -> None:
    if not (host_root / GRUBENV).is_file():
        raise FactoryResetError(f"no GRUB environment at /{GRUBENV}: a reset from the command needs a node "
                                "booted from a MaculaOS disk (use the boot menu's Factory reset entry)")
    if FLAG not in (host_root / GRUB_CFG).read_text(errors="replace"):
        raise FactoryResetError(f"this node's /{GRUB_CFG} predates factory reset from the command: use the "
                                "boot menu's Factory reset entry")


def schedule(host_root: Path, wipe_data: bool, editenv: str = "grub-editenv", seen_as: Path | None = None) -> str:
    """Set the flag for the next boot; returns the mode set (keep-data or all). Changes nothing else."""
    _check_boot_loader(host_root)
    mode = "all" if wipe_data else "keep-data"
    _editenv(host_root, ["set", f"{FLAG}={mode}"], editenv, seen_as)
    return mode


def cancel(host_root: Path, editenv: str = "grub-editenv") -> bool:
    """Clear a scheduled reset; False when none was scheduled."""
    _check_boot_loader(host_root)
    if not scheduled(host_root, editenv):
        return False
    _editenv(host_root, ["unset", FLAG], editenv)
    return True


def scheduled(host_root: Path, editenv: str = "grub-editenv") -> str:
    """The mode of a scheduled reset, or "" when none is."""
    for line in _editenv(host_root, ["list"], editenv).splitlines():
        if line.startswith(f"{FLAG}="):
            return line.split("=", 1)[1]
    return ""
