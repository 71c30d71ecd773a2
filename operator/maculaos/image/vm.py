"""Boot a built image in QEMU (direct kernel boot, serial console) and read what it prints on purpose.

TCG by default: nested KVM did not work on the machines this was built on, and a test must never need it.
MACULAOS_QEMU_ACCEL=kvm asks for KVM (QEMU falls back to TCG when KVM cannot start)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from maculaos.errors import MaculaosError


class BootError(MaculaosError, AssertionError):
    """A marker did not appear in time, or QEMU ended; the message carries the console log."""


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# The emulator and machine per image architecture. arm64: QEMU's generic `virt` board (PL011 serial:
# console=ttyAMA0) with a Cortex-A57, which TCG emulates faster than `max` (no pointer authentication);
# Debian's AAVMF (qemu-efi-aarch64) as firmware: the kernel is started as an EFI application.
QEMU = {"amd64": ("qemu-system-x86_64", ("-machine", "q35", "-cpu", "max"), "qemu-system-x86"),
        "arm64": ("qemu-system-aarch64", ("-machine", "virt", "-cpu", "cortex-a57"), "qemu-system-arm")}
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")


@dataclass(frozen=True)
class VmSpec:
    """Either a direct kernel boot (kernel, initrd, the squashfs and a data disk as separate drives) or a
    whole MaculaOS disk (`disk`) that the firmware boots through its own boot loader."""

    kernel: Path | None
    initrd: Path | None
    rootfs: Path | None
    data: Path | None
    cmdline: str = ""
    memory_mib: int = 1024
    cpus: int = 1
    network: bool = True
    extra_args: tuple[str, ...] = field(default=())
    disk: Path | None = None
    uefi_vars: Path | None = None
    """A writable copy of OVMF's variable store: boot with UEFI firmware (OVMF) instead of SeaBIOS."""
    reboot: bool = False
    """Let the guest reboot (GRUB's try counter needs real reboots); otherwise a reboot ends QEMU."""
    arch: str = "amd64"
    """The image's architecture: which QEMU (see QEMU); arm64 always boots through AAVMF (UEFI)."""

    @classmethod
    def for_disk(cls, disk: Path, uefi_vars: Path | None = None, reboot: bool = True,
                 extra_args: tuple[str, ...] = ()) -> VmSpec:
        return cls(None, None, None, None, disk=disk, uefi_vars=uefi_vars, reboot=reboot, extra_args=extra_args)


def uefi_vars_copy(target: Path, arch: str = "amd64") -> Path:
    """OVMF's (AAVMF's on arm64) empty variable store, copied: the firmware writes to it."""
    shutil.copyfile(AAVMF_VARS if arch == "arm64" else OVMF_VARS, target)
    return target


def qemu_command(spec: VmSpec) -> list[str]:
    accel = os.environ.get("MACULAOS_QEMU_ACCEL", "tcg")
    accels = ["-accel", "kvm", "-accel", "tcg"] if accel == "kvm" else ["-accel", "tcg"]
    binary, machine, _ = QEMU[spec.arch]
    cmd = [binary, *accels, *machine, "-m", str(spec.memory_mib),
           "-smp", str(spec.cpus), "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio"]
    if not spec.reboot:
        cmd.append("-no-reboot")
    if spec.uefi_vars and spec.arch == "arm64":
        cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={AAVMF_CODE}",
                "-drive", f"if=pflash,format=raw,file={spec.uefi_vars}"]
    elif spec.uefi_vars:
        cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,file={spec.uefi_vars}"]
    if spec.kernel and spec.initrd:
        cmd += ["-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", spec.cmdline]
    if spec.rootfs:
        cmd += ["-drive", f"file={spec.rootfs},format=raw,if=virtio,readonly=on"]
    if spec.disk:
        cmd += ["-drive", f"file={spec.disk},format=raw,if=virtio"]
    if spec.data:
        cmd += ["-drive", f"file={spec.data},format=raw,if=virtio"]
    cmd += ["-nic", "user,model=virtio-net-pci"] if spec.network else ["-nic", "none"]
    return cmd + list(spec.extra_args)


class Vm:
    """A running VM; use as a context manager so QEMU is always stopped."""

    def __init__(self, spec: VmSpec, log: Path | None = None) -> None:
        binary, _, package = QEMU[spec.arch]
        if not shutil.which(binary):
            raise BootError(f"{binary} is missing (Debian package {package}; tools/install.sh)")
        self.spec = spec
        self.log_path = log
        self.console = ""
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(qemu_command(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 4096):
            text = chunk.decode(errors="replace").replace("\r", "")
            with self._lock:
                self.console += text
            if self.log_path:
                with self.log_path.open("a") as f:
                    f.write(text)

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> re.Match[str]:
        """The first match of a regular expression on the console (from offset `since`)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.MULTILINE)
        while True:
            with self._lock:
                match = regex.search(self.console, since)
            if match:
                return match
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise BootError(f"QEMU ended (exit {self.proc.returncode}) before {pattern!r} appeared; "
                                f"console:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BootError(f"{pattern!r} did not appear within {timeout:.0f} s; console:\n{self.tail()}")
            time.sleep(0.2)

    def send(self, text: str) -> None:
        """Type on the serial console."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def tail(self, chars: int = 6000) -> str:
        with self._lock:
            return self.console[-chars:]

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise BootError(f"the VM did not power off within {timeout:.0f} s; console:\n{self.tail()}") from exc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
