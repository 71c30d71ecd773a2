"""The update bundle of a build: a signed RAUC bundle of the rootfs squashfs (format=verity: Debian 12's
RAUC 1.8 on the build machine creates it, Debian 13's RAUC on the node streams and checks it), with the
slot's kernel and initramfs beside it and a hook that puts them on the ESP, where GRUB reads them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from maculaos.host.bundles import BundleError
from maculaos.image import grub
from maculaos.image.signing import SigningIdentity

# GRUB cannot read a zstd squashfs, so each slot's kernel and initramfs live on the ESP (/A, /B). They are
# not in the squashfs (the ISO would carry them twice): the bundle holds them as files next to the slot
# image, and after RAUC wrote the squashfs into the slot this hook copies them from the mounted bundle
# next to GRUB. The slot is not booted (RAUC installs only into the inactive one), and each file is
# renamed into place, so a failed copy leaves the slot's old files whole and RAUC marks the install failed.
# The slot's version.cfg goes last: the bundle holds one per slot (grub.slot_version_cfg), and the hook
# puts the one of the slot it installed into beside the kernel, so GRUB's menu names what the slot holds.
HOOK = """#!/bin/sh
# MaculaOS bundle hook (operator/maculaos/image/bundle.py): after RAUC wrote the rootfs into a slot, put
# the bundle's kernel and initramfs on the ESP as /boot/efi/<bootname>/vmlinuz and initrd.img, and the
# slot's version line for GRUB's menu as version.cfg.
set -eu
[ "$1" = slot-post-install ] || exit 0
[ "$RAUC_SLOT_CLASS" = rootfs ] || exit 0
dir=/boot/efi/$RAUC_SLOT_BOOTNAME
mkdir -p "$dir"
place() {
\tcp "$RAUC_BUNDLE_MOUNT_POINT/$1" "$dir/$2.new"
\tsync
\tmv "$dir/$2.new" "$dir/$2"
}
place vmlinuz vmlinuz
place initrd.img initrd.img
place "version-$RAUC_SLOT_BOOTNAME.cfg" version.cfg
sync
"""


def compatible(arch: str) -> str:
    """RAUC's compatible string of a MaculaOS image (image-build/overlay/etc/rauc/system.conf)."""
    return f"maculaos-{arch}"


def _place(source: Path, target: Path) -> None:
    """A hard link when both are on one file system (no copy of a 300 MB squashfs), else a copy."""
    if source.stat().st_dev == target.parent.stat().st_dev:
        os.link(source, target)
    else:
        shutil.copyfile(source, target)


def build_bundle(squashfs: Path, kernel: Path, initrd: Path, target: Path, version: str, arch: str, build: str,
                 identity: SigningIdentity, fmt: str = "verity") -> Path:
    """`rauc bundle` of the squashfs, the kernel and the initramfs. All three are already compressed: the
    bundle's own squashfs stores them without compressing them again."""
    target.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        content = Path(tmp) / "content"
        content.mkdir()
        _place(squashfs, content / "rootfs.squashfs")
        _place(kernel, content / "vmlinuz")
        _place(initrd, content / "initrd.img")
        for slot in grub.SLOTS:
            (content / f"version-{slot}.cfg").write_text(grub.slot_version_cfg(slot, version))
        (content / "hook.sh").write_text(HOOK)
        (content / "hook.sh").chmod(0o755)
        (content / "manifest.raucm").write_text(
            f"[update]\ncompatible={compatible(arch)}\nversion={version}\nbuild={build}\n\n"
            f"[bundle]\nformat={fmt}\n\n[hooks]\nfilename=hook.sh\n\n"
            "[image.rootfs]\nfilename=rootfs.squashfs\nhooks=post-install\n")
        result = subprocess.run(["rauc", "bundle", f"--cert={identity.cert}", f"--key={identity.key}",
                                 "--mksquashfs-args=-noI -noD -noF -noX", str(content), str(target)],
                                capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BundleError(f"rauc bundle failed: {result.stderr.strip()}")
    return target
