"""The hybrid live/installer ISO: one file that boots from a CD drive or written raw to a USB stick, on
BIOS and UEFI machines, made by xorriso from a staging folder (no mounts):

    /boot/grub/grub.cfg      menu: live (default), install to disk, recovery (grub.iso_config)
    /boot/grub/bios.img      El Torito BIOS image (cdboot + GRUB core); the hybrid MBR loads the same core
    /boot/grub/efi.img       FAT image with EFI/BOOT/BOOTX64.EFI: El Torito EFI image and, for USB
                             sticks, an EFI system partition in the ISO's hybrid GPT
    /live/vmlinuz, /live/initrd.img, /live/root.squashfs
    /maculaos/install.json   what `maculaos install` needs besides the files above (the disk layout,
                             the kernel command line, the version): the medium describes itself
    /maculaos/install.yaml   only on a custom ISO made with an install config (unattended install)

The initramfs finds the medium by its volume label (macula.medium=LABEL=...), mounts it at
/run/maculaos/medium and the squashfs from it. Times come from SOURCE_DATE_EPOCH (xorriso honours it for
the volume dates and the GPT GUIDs), so the same inputs give the same ISO."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from maculaos.errors import MaculaosError
from maculaos.image import disk, grub
from maculaos.image.definition import ImageDefinition

MEDIUM_ROOT = Path("/run/maculaos/medium")
"""Where the initramfs mounts the medium (it stays visible after the switch to the real root)."""
MANIFEST = "maculaos/install.json"
INSTALL_CONFIG = "maculaos/install.yaml"
LIVE = {"kernel": "live/vmlinuz", "initrd": "live/initrd.img", "squashfs": "live/root.squashfs"}
EFI_IMAGE_SPARE_MIB = 1
"""Room left in the FAT image around BOOTX64.EFI (FAT tables, root folder): the image is sized to its
content, since every MiB of it is a MiB of the ISO (it was 8 MiB around a 0.8 MB GRUB)."""


class IsoError(MaculaosError):
    """The ISO cannot be made; the message says what to do."""


@dataclass(frozen=True)
class IsoInputs:
    squashfs: Path
    boot: disk.BootFiles
    version: str
    arch: str
    cmdline: str
    """The definition's kernel command line (the menu sets macula.mode per entry)."""
    esp_mib: int
    slot_mib: int
    data_mib: int
    """The disk layout `maculaos install` writes (data: the least it accepts; it takes the rest)."""
    epoch: int
    default: str = "live"
    """The menu entry booted after the timeout: live, install or recovery."""
    extra_cmdline: str = ""
    install_config: Path | None = None
    """A config.yaml the unattended install writes onto the new disk (a custom ISO)."""


def inputs_for(definition: ImageDefinition, build: Path, epoch: int, default: str = "live", extra_cmdline: str = "",
               install_config: Path | None = None) -> IsoInputs:
    """The ISO of a build whose squashfs, kernel and initrd are in the folder `build`; the other arguments
    make a custom ISO (e.g. one that installs unattended)."""
    d = definition
    files = {f: build / d.artifact(f) for f in ("squashfs", "kernel", "initrd")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise IsoError(f"not in {build}: {', '.join(missing)} (run `maculaos image build` first)")
    return IsoInputs(files["squashfs"], disk.BootFiles(files["kernel"], files["initrd"]), d.version, d.arch,
                     d.kernel_cmdline, d.disk.esp_mib, d.disk.slot_mib, d.disk.data_mib, epoch, default,
                     extra_cmdline, install_config)


def volume_label(version: str, arch: str) -> str:
    """The ISO 9660 volume ID (upper case, at most 32 characters): the initramfs and GRUB find the medium
    by it, so a machine with two MaculaOS media of different versions picks the one it booted."""
    label = f"MACULAOS_{version}_{arch}".upper().replace(".", "_").replace("-", "_")
    return label[:32]


def manifest(inputs: IsoInputs) -> dict[str, object]:
    return {"version": inputs.version, "arch": inputs.arch, "cmdline": grub.boot_cmdline(inputs.cmdline),
            "esp_mib": inputs.esp_mib, "slot_mib": inputs.slot_mib, "min_data_mib": inputs.data_mib,
            "files": LIVE}


def efi_image_mib(efi_bytes: int) -> int:
    """The FAT image's size for a BOOTX64.EFI of efi_bytes: the file rounded up to whole MiB, plus spare."""
    return -(-efi_bytes // disk.MIB) + EFI_IMAGE_SPARE_MIB


def _stage(inputs: IsoInputs, staging: Path, label: str) -> None:
    extra = inputs.extra_cmdline
    if inputs.install_config:
        extra = f"macula.install.config=/{INSTALL_CONFIG} {extra}".strip()
    files: dict[str, Path] = {LIVE["kernel"]: inputs.boot.kernel, LIVE["initrd"]: inputs.boot.initrd,
                              LIVE["squashfs"]: inputs.squashfs}
    if inputs.install_config:
        files[INSTALL_CONFIG] = inputs.install_config
    for name, source in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, staging / name)
    grub_dir = staging / "boot/grub"
    grub_dir.mkdir(parents=True, exist_ok=True)
    (grub_dir / "grub.cfg").write_text(grub.iso_config(inputs.version, grub.boot_cmdline(inputs.cmdline),
                                                       f"LABEL={label}", inputs.default, extra))
    (staging / MANIFEST).parent.mkdir(parents=True, exist_ok=True)
    (staging / MANIFEST).write_text(json.dumps(manifest(inputs), indent=2, sort_keys=True) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        efi = grub.iso_efi_image(Path(tmp) / "BOOTX64.EFI", label)
        image = grub_dir / "efi.img"
        size_mib = efi_image_mib(efi.stat().st_size)
        with image.open("wb") as f:
            f.truncate(size_mib * disk.MIB)
        volume_id = uuid.uuid5(uuid.NAMESPACE_URL, f"maculaos:iso:{label}:{inputs.epoch}").hex[:8]
        disk.make_fat(image, 0, size_mib, None, volume_id, {"EFI/BOOT/BOOTX64.EFI": efi},
                      inputs.epoch, fat32=False)
    grub.iso_bios_image(grub_dir / "bios.img", label)
    for path in grub_dir.glob("*.early.cfg"):
        path.unlink()
    for path in [staging, *staging.rglob("*")]:
        os.utime(path, (inputs.epoch, inputs.epoch))


def xorriso_command(staging: Path, target: Path, label: str) -> list[str]:
    """A hybrid ISO: El Torito BIOS and EFI boot images; for USB sticks an MBR with GRUB's hybrid boot
    code (it loads bios.img's core) and a GPT whose EFI system partition is efi.img inside the ISO."""
    return ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(target), "-V", label, "-R", "-J", "-joliet-long",
            "-b", "boot/grub/bios.img", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
            "--grub2-boot-info", "--grub2-mbr", str(grub.GRUB_LIB / "i386-pc" / "boot_hybrid.img"),
            "-eltorito-alt-boot", "-e", "boot/grub/efi.img", "-no-emul-boot", "-efi-boot-part", "--efi-boot-image",
            "--protective-msdos-label", "--gpt_disk_guid", "modification-date",
            "--sort-weight", "0", "/", "--sort-weight", "1", "/boot", str(staging)]


def build_iso(inputs: IsoInputs, target: Path, work: Path | None = None) -> Path:
    """The ISO at `target` (replaced), staged in a temporary folder under `work` (default: beside it)."""
    if not shutil.which("xorriso"):
        raise IsoError("xorriso is missing (Debian package xorriso; tools/install.sh installs it)")
    if inputs.default not in ("live", "install", "recovery"):
        raise IsoError(f"default entry {inputs.default!r}: want live, install or recovery")
    label = volume_label(inputs.version, inputs.arch)
    with tempfile.TemporaryDirectory(dir=work or target.parent) as tmp:
        staging = Path(tmp) / "iso"
        staging.mkdir()
        _stage(inputs, staging, label)
        target.unlink(missing_ok=True)
        env = os.environ | {"SOURCE_DATE_EPOCH": str(inputs.epoch)}
        result = subprocess.run(xorriso_command(staging, target, label), capture_output=True, text=True,
                                env=env, check=False)
        if result.returncode != 0:
            raise IsoError(f"xorriso failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    return target
