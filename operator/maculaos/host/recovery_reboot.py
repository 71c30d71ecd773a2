"""`maculaos recovery reboot`: the next boot, and only that one, in recovery mode, so that a person with
SSH to a node can repair its data partition (which a normal boot keeps mounted) without being at its
console. A one-shot flag in GRUB's environment: grub.cfg makes the recovery entry the default and clears
the flag in the same boot, so a recovery boot that goes wrong is followed by a normal one."""

from __future__ import annotations

from pathlib import Path

from maculaos.host import grubenv

FLAG = "RECOVERY"
ONCE = "once"


def _check_boot_loader(host_root: Path) -> None:
    grubenv.check_flag_known(host_root, FLAG, "a recovery boot from the command",
                             "choose Recovery mode in the boot menu at the console")


def schedule(host_root: Path, editenv: str = "grub-editenv") -> None:
    _check_boot_loader(host_root)
    grubenv.editenv(host_root, ["set", f"{FLAG}={ONCE}"], editenv)


def cancel(host_root: Path, editenv: str = "grub-editenv") -> bool:
    """Clear an asked-for recovery boot; False when none was asked for."""
    _check_boot_loader(host_root)
    if grubenv.value(host_root, FLAG, editenv) != ONCE:
        return False
    grubenv.editenv(host_root, ["unset", FLAG], editenv)
    return True
