"""The MaculaOS disk layout (GPT: bios_grub, ESP, rootfs-A, rootfs-B, data) and the raw disk image, made
without root mounts or loop devices: sfdisk on a plain file, the ESP by `mkfs.vfat --offset` + mtools, the data
partition by `mkfs.ext4 -d`, each made in place at its offset. `maculaos install` (image/install.py) lays
out a real disk through the same write_system."""

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
from maculaos.image import grub

MIB = 1024 * 1024
SECTOR = 512
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# Plain "Linux filesystem data", not the discoverable root type: systemd-gpt-auto-generator must not
# mount a slot on its own.
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_LABEL = "MACULA_ESP"
DATA_LABEL = "MACULA_DATA"
# Tools the disk outputs need, and the Debian package of each.
TOOLS = {"sfdisk": "fdisk", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools", "mlabel": "mtools",
         "mkfs.ext4": "e2fsprogs", "grub-mkimage": "grub-common", "grub-editenv": "grub-common",
         "qemu-img": "qemu-utils"}


class DiskError(MaculaosError):
    """The disk cannot be made; the message says what to do."""


@dataclass(frozen=True)
class Partition:
    number: int
    name: str
    """The GPT partition label: the initramfs and RAUC find partitions by it."""
    type_guid: str
    start_mib: int
    size_mib: int | None
    """None: the rest of the disk (the data partition of an install)."""

    @property
    def offset(self) -> int:
        return self.start_mib * MIB


@dataclass(frozen=True)
class DiskLayout:
    partitions: tuple[Partition, ...]
    total_mib: int | None

    def part(self, name: str) -> Partition:
        return next(p for p in self.partitions if p.name == name)


def plan(esp_mib: int, slot_mib: int, data_mib: int | None) -> DiskLayout:
    """The layout, 1 MiB aligned: bios_grub (core.img), ESP (GRUB, kernels per slot, grubenv), the two
    slots (squashfs written raw), data (ext4). data_mib None: data takes the rest of the disk."""
    sizes: list[tuple[str, str, int | None]] = [("bios", BIOS_BOOT, 1), ("ESP", ESP, esp_mib),
                                                ("rootfs-A", LINUX_DATA, slot_mib),
                                                ("rootfs-B", LINUX_DATA, slot_mib), ("data", LINUX_DATA, data_mib)]
    parts, start = [], 1
    for number, (name, type_guid, size) in enumerate(sizes, 1):
        parts.append(Partition(number, name, type_guid, start, size))
        start += size or 0
    return DiskLayout(tuple(parts), start + 1 if data_mib else None)  # +1 MiB: the backup GPT


def sfdisk_script(layout: DiskLayout, seed: str) -> str:
    """sfdisk input; GUIDs derived from `seed` (same inputs, same disk)."""
    def guid(what: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"maculaos:{seed}:{what}")).upper()
    lines = ["label: gpt", f"label-id: {guid('disk')}", "unit: sectors", "first-lba: 2048", ""]
    for p in layout.partitions:
        size = f" size={p.size_mib * MIB // SECTOR}," if p.size_mib else ""
        lines.append(f"start={p.offset // SECTOR},{size} type={p.type_guid}, uuid={guid(p.name)}, name=\"{p.name}\"")
    return "\n".join(lines) + "\n"


def check_tools(exclude: tuple[str, ...] = ()) -> None:
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items()
               if tool not in exclude and not shutil.which(tool)]
    if missing:
        raise DiskError(f"missing tools for the disk image: {', '.join(missing)}; tools/install.sh installs them")


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise DiskError(f"{what} failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()}")


@dataclass(frozen=True)
class BootFiles:
    """What the ESP holds for one slot: the kernel and initramfs of the squashfs in that slot."""

    kernel: Path
    initrd: Path


def make_fat(target: Path, offset: int, size_mib: int, label: str | None, volume_id: str,
             files: dict[str, Path], epoch: int, fat32: bool = True) -> None:
    """A FAT file system written in place at `offset` of `target` (an image file or a block device;
    mkfs.vfat --offset, then mtools on `target@@offset`), holding `files` (name inside: source) with
    the build's epoch as their time. The label is written by mlabel, not `mkfs.vfat -n`: mkfs.vfat
    (dosfstools 4.2) dates the label's directory entry with the time of the build, mtools (4.0.32 here)
    takes SOURCE_DATE_EPOCH."""
    fat = ["-F", "32", "-s", "1"] if fat32 else []
    _run(["mkfs.vfat", "-I", f"--offset={offset // SECTOR}", *fat, "-i", volume_id, str(target),
          str(size_mib * 1024)], f"mkfs.vfat of {label or 'a FAT image'}")
    env = os.environ | {"MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": str(epoch)}
    if label:
        _run(["mlabel", "-i", f"{target}@@{offset}", f"::{label}"], f"mlabel {label}", env)
    with tempfile.TemporaryDirectory() as tmp:
        # Staged as a tree with the epoch on every entry, copied by `mcopy -s -m` (which keeps the times):
        # folders made by mmd would carry the time of the build.
        tree = Path(tmp)
        for name, source in files.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tree / name)
        for path in tree.rglob("*"):
            os.utime(path, (epoch, epoch))
        tops = sorted(str(p) for p in tree.iterdir())
        if tops:
            _run(["mcopy", "-s", "-m", "-i", f"{target}@@{offset}", *tops, "::/"],
                 f"mcopy into {label or 'a FAT image'}", env)


def make_esp(target: Path, offset: int, size_mib: int, boot: dict[str, BootFiles], version: str, grub_cfg: str,
             volume_id: str, epoch: int) -> None:
    """The ESP at `offset` of `target`: FAT32, EFI/BOOT/BOOTX64.EFI, grub/grub.cfg, grub/grubenv,
    <slot>/vmlinuz, <slot>/initrd.img and <slot>/version.cfg for each slot with a system (of `version`)."""
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        files: dict[str, Path] = {
            "EFI/BOOT/BOOTX64.EFI": grub.efi_image(staging / "BOOTX64.EFI"),
            "grub/grubenv": grub.initial_environment(staging / "grubenv", list(boot)),
        }
        (staging / "grub.cfg").write_text(grub_cfg)
        files["grub/grub.cfg"] = staging / "grub.cfg"
        for slot, bf in boot.items():
            files[f"{slot}/vmlinuz"], files[f"{slot}/initrd.img"] = bf.kernel, bf.initrd
            (staging / f"version-{slot}.cfg").write_text(grub.slot_version_cfg(slot, version))
            files[f"{slot}/{grub.VERSION_CFG}"] = staging / f"version-{slot}.cfg"
        make_fat(target, offset, size_mib, ESP_LABEL, volume_id, files, epoch)


def make_data(target: Path, offset: int, size_mib: int, tree: Path | None, fs_uuid: str, epoch: int) -> None:
    """The data partition at `offset` of `target`: ext4 labelled MACULA_DATA, seeded from `tree` (e.g.
    var/lib/maculaos/config.yaml) when given; /var itself is seeded from the image at first boot."""
    seed = ["-d", str(tree)] if tree else []
    env = os.environ | {"E2FSPROGS_FAKE_TIME": str(epoch)}
    _run(["mkfs.ext4", "-q", "-F", "-L", DATA_LABEL, "-U", fs_uuid, "-E",
          f"hash_seed={fs_uuid},offset={offset},nodiscard", "-T", "default", *seed, str(target),
          f"{size_mib * 1024}k"], "mkfs.ext4 of the data partition", env)


def write_at(disk: Path, offset: int, source: Path, limit: int, sparse: bool = True) -> None:
    """Copy `source` into `disk` at `offset`. `sparse`: skip all-zero blocks (a new image file stays
    sparse); a device that held something before gets every block."""
    size = source.stat().st_size
    if size > limit:
        raise DiskError(f"{source.name} is {size // MIB} MiB, its partition {limit // MIB} MiB")
    block = MIB
    zero = bytes(block)
    with source.open("rb") as src, disk.open("r+b") as dst:
        position = 0
        while chunk := src.read(block):
            if not sparse or chunk != zero[:len(chunk)]:
                dst.seek(offset + position)
                dst.write(chunk)
            position += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())


@dataclass(frozen=True)
class DiskInputs:
    squashfs: Path
    boot: BootFiles
    version: str
    cmdline: str
    """The definition's kernel command line (grub.cfg sets rauc.slot and macula.mode per entry)."""
    esp_mib: int
    slot_mib: int
    data_mib: int
    seed: str
    """Makes the GUIDs, the ESP's volume ID and the data file system's UUID (same inputs, same disk)."""
    epoch: int
    data_tree: Path | None = None


def write_system(target: Path, layout: DiskLayout, inputs: DiskInputs, sparse: bool) -> None:
    """Everything of a MaculaOS disk onto `target` (a new image file, or the device `maculaos install`
    writes): the GPT, the ESP with GRUB, slot A with the system (slot B stays empty: RAUC installs into
    it), the data partition, and GRUB's BIOS boot code. One code path for the image and the installer."""
    check_tools(exclude=("qemu-img",))  # the qcow2 needs it, not a disk (nor a node installing one)
    result = subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "always",
                             str(target)], input=sfdisk_script(layout, inputs.seed), capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise DiskError(f"sfdisk failed: {result.stderr.strip()}")
    ids = uuid.uuid5(uuid.NAMESPACE_URL, f"maculaos:{inputs.seed}:filesystems")
    esp, data, bios = layout.part("ESP"), layout.part("data"), layout.part("bios")
    assert esp.size_mib and data.size_mib
    cfg = grub.grub_config(grub.boot_cmdline(inputs.cmdline))
    make_esp(target, esp.offset, esp.size_mib, {"A": inputs.boot}, inputs.version, cfg, ids.hex[:8], inputs.epoch)
    write_at(target, layout.part("rootfs-A").offset, inputs.squashfs, inputs.slot_mib * MIB, sparse)
    if not sparse:  # what an old system left in slot B must not look like a root file system
        zero_at(target, layout.part("rootfs-B").offset, MIB)
    make_data(target, data.offset, data.size_mib, inputs.data_tree, str(ids), inputs.epoch)
    with tempfile.TemporaryDirectory() as tmp:
        core = grub.bios_core_image(Path(tmp) / "core.img", esp.number)
        grub.install_bios(target, core, bios.offset // SECTOR, (bios.size_mib or 1) * MIB // SECTOR)


def zero_at(target: Path, offset: int, size: int) -> None:
    with target.open("r+b") as f:
        f.seek(offset)
        f.write(bytes(size))


def build_disk(inputs: DiskInputs, target: Path) -> DiskLayout:
    """The raw disk image: a sparse file of the planned size, then write_system."""
    layout = plan(inputs.esp_mib, inputs.slot_mib, inputs.data_mib)
    assert layout.total_mib is not None
    target.unlink(missing_ok=True)
    with target.open("wb") as f:
        f.truncate(layout.total_mib * MIB)
    write_system(target, layout, inputs, sparse=True)
    return layout


def partition_table(disk: Path) -> DiskLayout:
    """The layout of an existing disk or image, read back with sfdisk (sizes in whole MiB)."""
    result = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DiskError(f"cannot read the partition table of {disk}: {result.stderr.strip()}")
    table = json.loads(result.stdout)["partitiontable"]
    parts = tuple(Partition(n, p.get("name", ""), p["type"], p["start"] * SECTOR // MIB, p["size"] * SECTOR // MIB)
                  for n, p in enumerate(table["partitions"], 1))
    return DiskLayout(parts, None)


def boot_environment(disk: Path, values: dict[str, str] | None = None) -> dict[str, str]:
    """Read (and with `values`, first change) the GRUB environment on a disk image's ESP, as RAUC would
    on the node: for tests and for preparing an image before it is written out."""
    esp = partition_table(disk).part("ESP")
    image = f"{disk}@@{esp.offset}"
    env = os.environ | {"MTOOLS_SKIP_CHECK": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "grubenv"
        _run(["mcopy", "-n", "-i", image, "::/grub/grubenv", str(local)], "mcopy grubenv out of the ESP", env)
        if values:
            _run(["grub-editenv", str(local), "set", *(f"{k}={v}" for k, v in values.items())], "grub-editenv")
            _run(["mcopy", "-o", "-i", image, str(local), "::/grub/grubenv"], "mcopy grubenv into the ESP", env)
        listing = subprocess.run(["grub-editenv", str(local), "list"], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in listing.stdout.splitlines() if "=" in line)


def esp_put(disk: Path, files: dict[str, Path]) -> None:
    """Copy files onto a disk image's ESP (name on the ESP: source), replacing what is there."""
    image = f"{disk}@@{partition_table(disk).part('ESP').offset}"
    env = os.environ | {"MTOOLS_SKIP_CHECK": "1"}
    for name in sorted(files):
        folder = str(Path(name).parent)
        if folder != ".":
            subprocess.run(["mmd", "-D", "s", "-i", image, f"::/{folder}"], env=env, capture_output=True, check=False)
        _run(["mcopy", "-o", "-i", image, str(files[name]), f"::/{name}"], f"mcopy {name} into the ESP", env)


def esp_get(disk: Path, name: str) -> bytes:
    """A file's bytes from a disk image's ESP (the name on the ESP)."""
    image = f"{disk}@@{partition_table(disk).part('ESP').offset}"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "file"
        _run(["mcopy", "-n", "-i", image, f"::/{name}", str(local)], f"mcopy {name} out of the ESP",
             os.environ | {"MTOOLS_SKIP_CHECK": "1"})
        return local.read_bytes()


def qcow2(raw: Path, target: Path) -> Path:
    """The raw image as qcow2 (compressed): for QEMU/libvirt/Proxmox."""
    target.unlink(missing_ok=True)
    _run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(target)], "qemu-img convert")
    return target
