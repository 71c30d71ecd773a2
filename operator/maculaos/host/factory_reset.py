"""Factory reset from a running node (seed 4.10.2): a one-shot flag in GRUB's environment, so no one needs
to be at the console. grub.cfg passes the flag to the next normal boot; the initramfs then wipes the data
partition's configuration and state (renames first, so a power cut leaves a node that finishes the reset
on the next boot, never a half-reset one); maculaos-factory-reset-done.service clears the flag once the
reset boot is up. Until then every boot resets again, which is safe: the reset is idempotent."""

from __future__ import annotations

from pathlib import Path

from maculaos.host import grubenv

#: The GRUB environment variable grub.cfg reads: keep-data (keeps /var/lib/data) or all.
FLAG = "FACTORY_RESET"
#: Raised when a reset cannot be scheduled on this node (the message says why and what to do instead).
FactoryResetError = grubenv.GrubEnvError


def _check_boot_loader(host_root: Path) -> None:
    grubenv.check_flag_known(host_root, FLAG, "factory reset from the command",
                             "use the boot menu's Factory reset entry")


def schedule(host_root: Path, wipe_data: bool, editenv: str = "grub-editenv", seen_as: Path | None = None) -> str:
    """Set the flag for the next boot; returns the mode set (keep-data or all). Changes nothing else."""
    _check_boot_loader(host_root)
    mode = "all" if wipe_data else "keep-data"
    grubenv.editenv(host_root, ["set", f"{FLAG}={mode}"], editenv, seen_as)
    return mode


def cancel(host_root: Path, editenv: str = "grub-editenv") -> bool:
    """Clear a scheduled reset; False when none was scheduled."""
    _check_boot_loader(host_root)
    if not scheduled(host_root, editenv):
        return False
    grubenv.editenv(host_root, ["unset", FLAG], editenv)
    return True


def scheduled(host_root: Path, editenv: str = "grub-editenv") -> str:
    """The mode of a scheduled reset, or "" when none is."""
    return grubenv.value(host_root, FLAG, editenv)
