"""Boot-to-ready of a built MaculaOS image under QEMU TCG, and where the time goes.

Usage: .venv/bin/python benchmarks/image.py [--dist DIR] [--runs 3] [--memory 1024] [--disk|--iso [--uefi]]
DIR holds macula-os-*.{kernel,initrd,squashfs} (default: the newest build the image tests cached).
Each run boots a fresh data disk with a config.yaml (disk mode, the one-shot apply runs), and reports
wall time to the initramfs handing over, to MACULAOS-READY, and the apply service's own run time inside
the guest (Python start-up under emulation). The baseline, booted in the same run with the same QEMU
flags (image/vm.py), alternating with MaculaOS: a minimal Debian 13 (mmdebstrap minbase with the kernel
and systemd, built once and cached) from QEMU start to its serial login prompt. The budget is
MACULAOS-READY at most 1.5 times that.
--disk boots the raw disk image instead (firmware -> GRUB -> slot A, SeaBIOS or with --uefi OVMF; no
config.yaml), and reports the wall time to GRUB booting the kernel, to the hand-over and to ready.
--iso boots the build's ISO (as a CD under SeaBIOS, as a USB stick under --uefi) into the live system:
an ISO the build's own builder makes of the same files with console=ttyS0 added, so that the markers
reach the serial line. The sizes of every output of the build are listed either way."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from maculaos.image.build import default_cache  # noqa: E402
from maculaos.image.definition import load_definition  # noqa: E402
from maculaos.image.disk import boot_environment  # noqa: E402
from maculaos.image.iso import build_iso, inputs_for  # noqa: E402
from maculaos.image.vm import Vm, VmSpec, accelerator, qemu_command, uefi_vars_copy  # noqa: E402

CMDLINE = "boot=macula rauc.slot=A console=ttyS0 macula.root=/dev/vda macula.data=/dev/vdb macula.mode=disk"


# The baseline: Debian 13 with systemd and nothing else, its initramfs as Debian makes it (MODULES=most).
BASELINE_PACKAGES = "linux-image-amd64,systemd-sysv,udev,initramfs-tools,zstd"


def baseline_debian(cache: Path) -> Path:
    """A minimal Debian 13 systemd root as an ext4 disk with its kernel and initrd beside it (cached)."""
    out = cache / "baseline-trixie"
    if (out / "complete").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        root = Path(tmp) / "root"
        subprocess.run(["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={BASELINE_PACKAGES}",
                        "trixie", str(root), "http://deb.debian.org/debian"], check=True)
        shutil.copyfile(next(root.glob("boot/vmlinuz-*")), out / "vmlinuz")
        shutil.copyfile(next(root.glob("boot/initrd.img-*")), out / "initrd")
        (out / "root.img").unlink(missing_ok=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(out / "root.img"), "1500M"], check=True)
    (out / "complete").touch()
    return out


def baseline_boot(base: Path, memory: int, tmp: Path, qemu_args: tuple[str, ...] = ()) -> float:
    """QEMU start to the serial login prompt of the baseline (a fresh copy of its disk each time)."""
    disk = tmp / "baseline.img"
    subprocess.run(["cp", "--sparse=always", str(base / "root.img"), str(disk)], check=True)
    spec = VmSpec(base / "vmlinuz", base / "initrd", None, disk, "root=/dev/vda rw console=ttyS0",
                  memory_mib=memory, extra_args=qemu_args)
    with Vm(spec) as vm:
        vm.wait_for(r"login: ", 900)
        return vm.elapsed()


def newest_build() -> Path:
    builds = sorted((default_cache() / "builds").glob("*/complete"), key=lambda p: p.stat().st_mtime)
    if not builds:
        raise SystemExit("no cached build: run the image tests or pass --dist")
    return builds[-1].parent


def one_boot(dist: Path, memory: int, tmp: Path, qemu_args: tuple[str, ...] = ()
             ) -> tuple[float, float, float, float]:
    def one(fmt: str) -> Path:
        return next(dist.glob(f"macula-os-*.{fmt}"))
    tree = tmp / "tree" / "var/lib/maculaos"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "config.yaml").write_text("maculaos:\n  mesh:\n    roles: {bootstrap: true}\n")
    disk = tmp / "data.img"
    disk.unlink(missing_ok=True)
    with disk.open("wb") as f:
        f.truncate(512 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "MACULA_DATA", "-d", str(tmp / "tree"), str(disk)], check=True)
    spec = VmSpec(one("kernel"), one("initrd"), one("squashfs"), disk, CMDLINE, memory_mib=memory,
                  extra_args=qemu_args)
    with Vm(spec) as vm:
        vm.wait_for(r"maculaos: root /dev/vda", 900)
        handover = vm.elapsed()
        ready = vm.wait_for(r"MACULAOS-READY .*uptime=([0-9.]+)s", 900)
        wall = vm.elapsed()
    times = re.findall(r"\[\s*([0-9.]+)\] maculaos\[\d+\]: mesh roles", vm.console)
    return handover, wall, float(ready.group(1)), float(times[0]) if times else float("nan")


def one_disk_boot(dist: Path, memory: int, tmp: Path, uefi: bool, iso: bool = False
                  ) -> tuple[float, float, float, float]:
    """Firmware -> GRUB -> slot A of a fresh copy of the raw image, or the live system of the ISO: (to
    GRUB booting the kernel, to the initramfs hand-over, to MACULAOS-READY, guest uptime at ready)."""
    disk = tmp / "disk.img"
    if iso:
        repo = Path(__file__).resolve().parents[1]
        definition = load_definition(repo / "image-build" / "maculaos.yaml", [])
        build_iso(inputs_for(definition, dist, 0, extra_cmdline="console=ttyS0"), disk)
    else:
        subprocess.run(["cp", "--sparse=always", str(next(dist.glob("macula-os-*.img"))), str(disk)], check=True)
        boot_environment(disk, {"EXTRA_CMDLINE": "console=ttyS0"})
    spec = VmSpec.for_disk(disk, uefi_vars_copy(tmp / "vars.fd") if uefi else None)
    if iso and not uefi:  # the ISO as a CD (El Torito) under SeaBIOS
        cdrom = ("-drive", f"file={disk},media=cdrom,if=ide,readonly=on")
        spec = dataclasses.replace(spec, disk=None, extra_args=cdrom)
    spec = dataclasses.replace(spec, memory_mib=memory)
    with Vm(spec) as vm:
        vm.wait_for(r"Booting `MaculaOS", 900)
        grub = vm.elapsed()
        vm.wait_for(r"maculaos: root /dev/", 900)
        handover = vm.elapsed()
        ready = vm.wait_for(r"MACULAOS-READY .*uptime=([0-9.]+)s", 900)
        return grub, handover, vm.elapsed(), float(ready.group(1))


def sizes(dist: Path) -> None:
    print("\n| output | MiB (apparent) | MiB (allocated) |\n| --- | --- | --- |")
    for path in sorted(dist.iterdir()):
        if path.is_file() and path.name != "complete":
            st = path.stat()
            print(f"| {path.name} | {st.st_size / 2**20:.1f} | {st.st_blocks * 512 / 2**20:.1f} |")


def disk_main(dist: Path, runs: int, memory: int, uefi: bool, iso: bool = False) -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            rows.append(one_disk_boot(dist, memory, Path(tmp), uefi, iso))
            print(f"run: GRUB boots the kernel {rows[-1][0]:.1f} s, hand-over {rows[-1][1]:.1f} s, ready "
                  f"{rows[-1][2]:.1f} s (guest uptime {rows[-1][3]:.1f} s)", flush=True)
    med = [statistics.median(r[i] for r in rows) for i in range(4)]
    firmware = "OVMF (UEFI)" if uefi else "SeaBIOS"
    what = "ISO, live" + (" (USB stick)" if uefi else " (CD)") if iso else "raw disk image"
    print(f"\n| what ({firmware}, {what}) | median of {runs} |\n| --- | --- |")
    print(f"| QEMU start → GRUB boots the kernel (firmware + GRUB + 5 s menu) | {med[0]:.1f} s |")
    print(f"| QEMU start → initramfs hands over | {med[1]:.1f} s |")
    print(f"| QEMU start → MACULAOS-READY | {med[2]:.1f} s |")
    print(f"| guest uptime at MACULAOS-READY | {med[3]:.1f} s |")
    sizes(dist)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dist", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", type=int, default=1024, help="MiB of RAM given to the VM")
    parser.add_argument("--disk", action="store_true", help="boot the raw disk image through GRUB")
    parser.add_argument("--iso", action="store_true", help="boot the ISO's live system through its GRUB")
    parser.add_argument("--uefi", action="store_true", help="with --disk/--iso: OVMF instead of SeaBIOS")
    parser.add_argument("--qemu-args", default="", help="QEMU options appended to image/vm.py's (the last -cpu "
                        "and -smp win), e.g. '-cpu max -smp 1' for the flags used before")
    args = parser.parse_args()
    dist = args.dist or newest_build()
    if args.disk or args.iso:
        return disk_main(dist, args.runs, args.memory, args.uefi, args.iso)
    base = baseline_debian(default_cache())
    qemu_args = tuple(args.qemu_args.split())
    rows, baselines = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            baselines.append(baseline_boot(base, args.memory, Path(tmp), qemu_args))
            rows.append(one_boot(dist, args.memory, Path(tmp), qemu_args))
            print(f"run: baseline login {baselines[-1]:.1f} s; MaculaOS handover {rows[-1][0]:.1f} s, ready "
                  f"{rows[-1][1]:.1f} s (guest uptime {rows[-1][2]:.1f} s), apply finished at guest "
                  f"{rows[-1][3]:.1f} s", flush=True)
    med = [statistics.median(r[i] for r in rows) for i in range(4)]
    login = statistics.median(baselines)
    squashfs = next(dist.glob("macula-os-*.squashfs")).stat().st_size / 2**20
    accel = accelerator(VmSpec(base / "vmlinuz", None, None, None))
    flags = " ".join([*qemu_command(VmSpec(None, None, None, None, memory_mib=args.memory), accel)[1:11],
                      args.qemu_args])
    print(f"\n| what (`{flags.strip()}`) | median of {args.runs} |\n| --- | --- |")
    print(f"| baseline: minimal Debian 13, QEMU start → serial login | {login:.1f} s |")
    print(f"| QEMU start → initramfs hands over | {med[0]:.1f} s |")
    print(f"| QEMU start → MACULAOS-READY | {med[1]:.1f} s (**{med[1] / login:.2f}×** the baseline; budget 1.5×) |")
    print(f"| guest uptime at MACULAOS-READY | {med[2]:.1f} s |")
    print(f"| guest uptime when the apply logged its result | {med[3]:.1f} s |")
    print(f"| RAM given to the VM | {args.memory} MiB |")
    print(f"| squashfs | {squashfs:.0f} MiB |")
    sizes(dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
