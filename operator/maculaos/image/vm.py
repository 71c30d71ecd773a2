"""Boot a built image in QEMU (direct kernel boot, serial console) and read what it prints on purpose.

The one QEMU command builder of the project: the image tests, the benchmarks and developers' VMs boot
the same way. KVM when it works, else TCG: a machine can open /dev/kvm and still fail to run a guest
(nested KVM on the machines this was built on stops in the kernel's decompressor with "KVM internal
error"), so KVM is used only after a probe boot of a kernel reached its banner under it. The verdict
is kept per QEMU and host kernel (`kvm_verdict_file`). MACULAOS_QEMU_ACCEL=tcg or =kvm skips the probe.

Under TCG the guest CPU is QEMU's plain `qemu64`, not `max`, whose every extension QEMU must emulate.
One vCPU: with two, multi-threaded TCG (Debian 12's QEMU 7.2) now and then leaves a guest kernel running
code it has just patched (an "int3" oops at boot, or a hang), about one boot in ten on these machines
(docs/benchmarks.md)."""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import select
import shutil
import socket
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
# The emulator, machine, TCG's CPU model and Debian package per image architecture. amd64: `qemu64`, the
# x86-64 baseline Debian builds for (no extension for TCG to emulate). arm64: QEMU's generic `virt` board
# (PL011 serial: console=ttyAMA0) with a Cortex-A57, which TCG emulates faster than `max` (no pointer
# authentication); Debian's AAVMF (qemu-efi-aarch64) as firmware: the kernel is started as an EFI
# application. Under KVM the guest gets the host's CPU.
QEMU = {"amd64": ("qemu-system-x86_64", ("-machine", "q35"), "qemu64", "qemu-system-x86"),
        "arm64": ("qemu-system-aarch64", ("-machine", "virt"), "cortex-a57", "qemu-system-arm")}
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
#: The network's name in QEMU's monitor (`set_link nic0 off` cuts the guest's cable).
NIC = "nic0"
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
    forwards: tuple[tuple[int, int], ...] = ()
    """TCP ports of the host's loopback forwarded to the guest's (host, guest): SSH, the kubelet..."""
    monitor: Path | None = None
    """A Unix socket for QEMU's human monitor (Vm.monitor_command: `set_link` cuts the cable); a short
    path, sockets' paths are limited to 107 bytes."""

    @classmethod
    def for_disk(cls, disk: Path, uefi_vars: Path | None = None, reboot: bool = True,
                 extra_args: tuple[str, ...] = ()) -> VmSpec:
        return cls(None, None, None, None, disk=disk, uefi_vars=uefi_vars, reboot=reboot, extra_args=extra_args)


def uefi_vars_copy(target: Path, arch: str = "amd64") -> Path:
    """OVMF's (AAVMF's on arm64) empty variable store, copied: the firmware writes to it."""
    shutil.copyfile(AAVMF_VARS if arch == "arm64" else OVMF_VARS, target)
    return target


def _native() -> tuple[str, tuple[str, ...], str, str]:
    return QEMU[HOST_ARCH.get(platform.machine(), "amd64")]


def kvm_verdict_file() -> Path:
    """Where the probe's verdict is kept: one per QEMU version and host kernel, either of which decides."""
    qemu = subprocess.run([_native()[0], "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    key = re.sub(r"[^A-Za-z0-9.]+", "-", f"{platform.release()}-{qemu}")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "maculaos" / "qemu" / f"kvm-{key}.json"


def probe_kvm(kernel: Path, timeout: float = 30.0) -> bool | None:
    """Boot `kernel` under KVM until its banner or KVM's failure (QEMU then stops the guest and waits,
    so the console is read as it comes): does KVM run a guest here? None: neither was seen (not a
    kernel, QEMU refused), so nothing is learnt about KVM."""
    binary, machine, _, _ = _native()
    cmd = [binary, "-accel", "kvm", *machine, "-cpu", "host", "-m", "256", "-nodefaults", "-display", "none",
           "-monitor", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(kernel),
           "-append", "console=ttyS0 panic=-1"]
    deadline = time.monotonic() + timeout
    out = b""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        try:
            while time.monotonic() < deadline and b"Linux version" not in out and b"KVM internal error" not in out:
                if not select.select([proc.stdout], [], [], 1)[0]:
                    continue
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
        finally:
            proc.kill()
    if b"KVM internal error" in out:
        return False
    return True if b"Linux version" in out else None


def kvm_device_opens() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return False
    return True


@functools.cache
def kvm_usable(kernel: Path | None) -> bool:
    """KVM for guests of this machine's architecture: /dev/kvm opens and a probe boot ran under it (the
    verdict of an earlier probe when this boot has no kernel of its own to probe with)."""
    if not kvm_device_opens():
        return False
    verdict = kvm_verdict_file()
    if verdict.exists():
        return bool(json.loads(verdict.read_text())["kvm"])
    if kernel is None:
        return False
    works = probe_kvm(kernel)
    if works is None:
        return False
    verdict.parent.mkdir(parents=True, exist_ok=True)
    verdict.write_text(json.dumps({"kvm": works, "probed_with": str(kernel)}) + "\n")
    return works


def accelerator(spec: VmSpec) -> str:
    """"kvm" or "tcg": MACULAOS_QEMU_ACCEL when set to one of them, else KVM where it works."""
    asked = os.environ.get("MACULAOS_QEMU_ACCEL", "auto")
    if asked in ("kvm", "tcg"):
        return asked
    native = HOST_ARCH.get(platform.machine()) == spec.arch
    return "kvm" if native and kvm_usable(spec.kernel) else "tcg"


def qemu_command(spec: VmSpec, accel: str = "tcg") -> list[str]:
    binary, machine, tcg_cpu, _ = QEMU[spec.arch]
    cpu = ["-cpu", "host" if accel == "kvm" else tcg_cpu]
    cmd = [binary, "-accel", accel, *machine, *cpu, "-m", str(spec.memory_mib),
           "-smp", str(spec.cpus), "-nodefaults", "-display", "none", "-serial", "stdio",
           "-monitor", f"unix:{spec.monitor},server=on,wait=off" if spec.monitor else "none"]
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
    forwards = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in spec.forwards)
    cmd += ["-nic", f"user,id={NIC},model=virtio-net-pci{forwards}"] if spec.network else ["-nic", "none"]
    return cmd + list(spec.extra_args)


class Vm:
    """A running VM; use as a context manager so QEMU is always stopped."""

    def __init__(self, spec: VmSpec, log: Path | None = None) -> None:
        binary, _, _, package = QEMU[spec.arch]
        if not shutil.which(binary):
            raise BootError(f"{binary} is missing (Debian package {package}; tools/install.sh)")
        self.spec = spec
        self.accel = accelerator(spec)
        self.log_path = log
        self.console = ""
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(qemu_command(spec, self.accel), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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

    def monitor_command(self, command: str, timeout: float = 10.0) -> str:
        """Run one command in QEMU's human monitor (the spec's `monitor` socket) and return what it printed."""
        if self.spec.monitor is None:
            raise BootError("this VM was started without a monitor socket (VmSpec.monitor)")
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(timeout)
            conn.connect(str(self.spec.monitor))
            reply = b""
            for line in (b"", f"{command}\n".encode()):
                conn.sendall(line)
                reply = b""
                while not reply.endswith(b"(qemu) "):
                    chunk = conn.recv(4096)
                    if not chunk:
                        raise BootError(f"QEMU's monitor closed before answering {command!r}")
                    reply += chunk
        # The monitor echoes the command as a line editor would (escape sequences), then prints its answer.
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", reply.decode(errors="replace")).replace("\r", "")
        return text.partition("\n")[2].removesuffix("(qemu) ")

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
