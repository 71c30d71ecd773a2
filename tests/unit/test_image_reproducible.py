"""Same inputs and SOURCE_DATE_EPOCH, same bytes, whatever the wall clock says: the rootfs tar and the raw
disk image (its ESP above all) made twice from the same tree, with the build's own times (atime, ctime,
the clock) moved on between the two. A full double build of the image is benchmarks/image_reproducible.py."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from maculaos.image.build import rootfs_tar
from maculaos.image.disk import MIB, BootFiles, DiskInputs, build_disk, partition_table

EPOCH = 1_700_000_000
CMDLINE = "boot=macula macula.mode=disk rauc.slot=A console=ttyS0 ro quiet"


def _touch_build_times(tree: Path) -> None:
    """What a second build does to the same files: other access and change times (chmod to the same mode
    moves ctime), and the clock a second or more further on (FAT stores times in 2-second steps)."""
    for path in [tree, *tree.rglob("*")]:
        if not path.is_symlink():
            st = path.stat()
            os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))
            path.chmod(st.st_mode & 0o7777)
    time.sleep(2.1)


def _tree(tmp: Path) -> Path:
    tree = tmp / "root"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "dev").mkdir()
    (tree / "dev/null-standin").write_text("left out")
    (tree / "usr/bin/tool").write_text("#!/bin/sh\necho tool\n")
    (tree / "usr/bin/tool").chmod(0o755)
    (tree / "etc/old").write_text("from a .deb: keeps its time")
    os.utime(tree / "etc/old", (EPOCH - 86400, EPOCH - 86400))
    (tree / "etc/new").write_text("written by the build: clamped to the epoch")
    (tree / "etc/link").symlink_to("../usr/bin/tool")
    return tree


def test_rootfs_tar_is_the_same_bytes_when_made_again_later(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    first, second = tmp_path / "a.tar.zst", tmp_path / "b.tar.zst"
    rootfs_tar(tree, first, EPOCH)
    _touch_build_times(tree)
    rootfs_tar(tree, second, EPOCH)
    assert first.read_bytes() == second.read_bytes()
    listing = subprocess.run(["tar", "--list", "--verbose", "--full-time", "--numeric-owner", "-f", str(first)],
                             capture_output=True, text=True, check=True).stdout
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in listing.splitlines()}
    assert "./dev/null-standin" not in lines and "./dev/" in lines
    assert "2023-11-14 22:13:20" in lines["./etc/new"]             # the epoch, not the time of the run
    assert "2023-11-13 22:13:20" in lines["./etc/old"]             # older than the epoch: kept
    assert " 0/0 " in lines["./usr/bin/tool"]


def test_disk_image_with_its_esp_is_the_same_bytes_when_built_again_later(tmp_path: Path) -> None:
    squashfs, kernel, initrd = tmp_path / "root.squashfs", tmp_path / "vmlinuz", tmp_path / "initrd"
    squashfs.write_bytes(b"SQUASHFS STAND-IN" + bytes(MIB))
    kernel.write_bytes(b"KERNEL" * 1000)
    initrd.write_bytes(b"INITRD" * 1000)
    inputs = DiskInputs(squashfs, BootFiles(kernel, initrd), "9.9.9", CMDLINE, esp_mib=64, slot_mib=16,
                        data_mib=16, seed="test", epoch=EPOCH)
    first, second = tmp_path / "a.img", tmp_path / "b.img"
    build_disk(inputs, first)
    _touch_build_times(tmp_path)
    build_disk(inputs, second)
    esp = partition_table(first).part("ESP")
    with first.open("rb") as a, second.open("rb") as b:
        a.seek(esp.offset)
        b.seek(esp.offset)
        assert a.read(esp.size_mib * MIB) == b.read(esp.size_mib * MIB), "the ESPs differ"
    assert first.read_bytes() == second.read_bytes()
    blkid = subprocess.run(["blkid", "-p", "-o", "export", "--offset", str(esp.offset), str(first)],
                           capture_output=True, text=True).stdout
    assert "LABEL=MACULA_ESP" in blkid, blkid                    # labelled by mlabel, not mkfs.vfat -n
