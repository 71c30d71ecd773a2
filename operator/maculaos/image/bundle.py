"""The update bundle of a build: a signed RAUC bundle of the rootfs squashfs (format=verity: Debian 12's
RAUC 1.8 on the build machine creates it, Debian 13's RAUC on the node streams and checks it), with a
hook that puts the new slot's kernel and initramfs on the ESP, where GRUB reads them."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from maculaos.image.signing import SigningIdentity

# GRUB cannot read a zstd squashfs, so each slot's kernel and initramfs live on the ESP (/A, /B). RAUC
# writes the squashfs into the slot, then this hook copies that slot's boot files next to GRUB; the slot
# is not booted (RAUC installs only into the inactive one), and each file is renamed into place.
HOOK = """#!/bin/sh
# MaculaOS bundle hook (operator/maculaos/image/bundle.py): after RAUC wrote the rootfs into a slot, put
# that slot's kernel and initramfs on the ESP as /boot/efi/<bootname>/vmlinuz and initrd.img.
set -eu
[ "$1" = slot-post-install ] || exit 0
[ "$RAUC_SLOT_CLASS" = rootfs ] || exit 0
dir=/boot/efi/$RAUC_SLOT_BOOTNAME
mnt=$(mktemp -d /run/maculaos-slot.XXXXXX)
mount -t squashfs -o ro "$RAUC_SLOT_DEVICE" "$mnt"
trap 'umount "$mnt"; rmdir "$mnt"' EXIT
mkdir -p "$dir"
for pair in "vmlinuz vmlinuz-" "initrd.img initrd.img-"; do
\tset -- $pair
\tsrc=$(ls "$mnt"/boot/"$2"* | head -n 1)
\tcp "$src" "$dir/$1.new"
\tsync
\tmv "$dir/$1.new" "$dir/$1"
done
sync
"""


class BundleError(RuntimeError):
    pass


def compatible(arch: str) -> str:
    """RAUC's compatible string of a MaculaOS image (image-build/overlay/etc/rauc/system.conf)."""
    return f"maculaos-{arch}"


def build_bundle(squashfs: Path, target: Path, version: str, arch: str, build: str,
                 identity: SigningIdentity, fmt: str = "verity") -> Path:
    """`rauc bundle` of the squashfs. The squashfs is already zstd: the bundle's own squashfs stores it
    without compressing it again."""
    target.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        content = Path(tmp) / "content"
        content.mkdir()
        os.link(squashfs, content / "rootfs.squashfs") if squashfs.stat().st_dev == content.stat().st_dev \
            else (content / "rootfs.squashfs").write_bytes(squashfs.read_bytes())
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
