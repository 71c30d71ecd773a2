"""Building an image for another architecture than the build machine's (arm64 on amd64): mmdebstrap runs
the new root's programs (maintainer scripts, customize.sh) under qemu-user-static, which the kernel starts
for foreign binaries through binfmt_misc. Checked before any download, so a machine without it gets one
clear sentence instead of an exec format error deep inside mmdebstrap."""

from __future__ import annotations

import platform
from pathlib import Path

from maculaos.errors import MaculaosError

BINFMT = Path("/proc/sys/fs/binfmt_misc")
# Debian architecture -> the name QEMU (and its binfmt handler, qemu-<name>) gives it.
QEMU_NAMES = {"amd64": "x86_64", "arm64": "aarch64"}
_MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
INSTALL_HINT = "apt-get install qemu-user-static binfmt-support (tools/install.sh installs them)"


class EmulationError(MaculaosError):
    """A foreign-architecture build on a machine that cannot run the foreign programs."""


def host_arch() -> str:
    """The build machine's architecture, in Debian's name."""
    machine = platform.machine()
    return _MACHINES.get(machine, machine)


def check(arch: str, binfmt: Path = BINFMT, host: str | None = None) -> str:
    """Nothing when `arch` is the machine's own; else the registered binfmt handler must exist, be enabled
    and have the F flag (the kernel opens the interpreter at registration, so it works inside a chroot
    that has no qemu). Returns what will run the build's programs, for the build log."""
    host = host or host_arch()
    if arch == host:
        return "native"
    name = QEMU_NAMES.get(arch)
    if name is None:
        raise EmulationError(f"no emulator known for architecture {arch!r}")
    if not (binfmt / "status").exists():
        raise EmulationError(f"an {arch} image on this {host} machine runs its programs under qemu-user-static, "
                             f"but binfmt_misc is not mounted at {binfmt}: mount -t binfmt_misc binfmt_misc {binfmt}")
    handler = binfmt / f"qemu-{name}"
    if not handler.exists():
        raise EmulationError(f"an {arch} image on this {host} machine needs qemu-user-static: no qemu-{name} "
                             f"handler is registered in {binfmt}; {INSTALL_HINT}")
    lines = handler.read_text().splitlines()
    if not lines or lines[0].strip() != "enabled":
        raise EmulationError(f"the binfmt handler {handler} is disabled: update-binfmts --enable qemu-{name}")
    flags = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("flags:")), "")
    if "F" not in flags:
        raise EmulationError(f"the binfmt handler {handler} lacks the F (fix binary) flag, so programs in the "
                             f"new root cannot find their emulator; Debian's qemu-user-static registers it "
                             f"with F ({INSTALL_HINT})")
    interpreter = next((line.split(" ", 1)[1].strip() for line in lines if line.startswith("interpreter ")), "?")
    return f"emulated: {interpreter}"
