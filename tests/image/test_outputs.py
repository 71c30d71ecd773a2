"""The build's outputs as a user downloads them: every file in SHA256SUMS and its signature checks out,
the RAUC bundle is accepted by the keyring inside the image and refused under another CA, the qcow2 holds
the raw disk, and the image says who signed it."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from maculaos.image.signing import development_identity
from tests.image.conftest import BuiltImage

pytestmark = pytest.mark.image

OUTPUTS = ("img", "qcow2", "iso", "raucb", "squashfs", "kernel", "initrd", "rootfs.tar.zst", "build-info", "cert.pem")


def test_sha256sums_cover_every_output_and_are_signed(built_image: BuiltImage, tmp_path: Path) -> None:
    sums = built_image.out / "SHA256SUMS"
    listed = dict(reversed(line.split("  ", 1)) for line in sums.read_text().splitlines())
    assert sorted(listed) == sorted(built_image.artifact(f).name for f in OUTPUTS)
    for name in ("macula-os-0.1.0-amd64.build-info", "macula-os-0.1.0-amd64.cert.pem"):
        assert hashlib.sha256((built_image.out / name).read_bytes()).hexdigest() == listed[name]
    pub = tmp_path / "pub.pem"
    subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(built_image.artifact("cert.pem")),
                    "-out", str(pub)], check=True)
    verify = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature",
                             str(built_image.out / "SHA256SUMS.sig"), str(sums)], capture_output=True, text=True)
    assert verify.returncode == 0 and "Verified OK" in verify.stdout


def test_bundle_passes_the_images_own_keyring_and_not_another(built_image: BuiltImage, tmp_path: Path) -> None:
    keyring = tmp_path / "keyring.pem"
    keyring.write_bytes(subprocess.run(["unsquashfs", "-cat", str(built_image.squashfs), "etc/rauc/keyring.pem"],
                                       capture_output=True, check=True).stdout)
    conf = subprocess.run(["unsquashfs", "-cat", str(built_image.squashfs), "etc/rauc/system.conf"],
                          capture_output=True, text=True, check=True).stdout
    assert "bootloader=grub" in conf and "compatible=maculaos-amd64" in conf
    bundle = built_image.artifact("raucb")
    info = subprocess.run(["rauc", "info", f"--keyring={keyring}", str(bundle)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "Bundle Format: \tverity" in info.stdout and "'maculaos-amd64'" in info.stdout
    other = development_identity(tmp_path / "other-ca").keyring
    refused = subprocess.run(["rauc", "info", f"--keyring={other}", str(bundle)], capture_output=True, text=True)
    assert refused.returncode != 0 and "signature" in refused.stderr.lower(), refused.stderr


def test_bundle_carries_the_kernel_and_initramfs_and_the_squashfs_does_not(built_image: BuiltImage) -> None:
    """GRUB reads each slot's kernel from the ESP: the bundle's hook copies them there from the bundle, so
    the squashfs does not carry a second copy (the ISO would hold it twice)."""
    bundle = built_image.artifact("raucb")
    for name, fmt in (("vmlinuz", "kernel"), ("initrd.img", "initrd")):
        inside = subprocess.run(["unsquashfs", "-cat", str(bundle), name], capture_output=True, check=True).stdout
        assert inside == built_image.artifact(fmt).read_bytes(), name
    listing = subprocess.run(["unsquashfs", "-l", "-d", "", str(built_image.squashfs)], capture_output=True,
                             text=True, check=True).stdout.split()
    assert "/boot" in listing                                          # config-*, System.map-* stay
    assert [p for p in listing if Path(p).name.startswith(("vmlinuz", "initrd.img"))] == []


def test_image_says_it_was_signed_by_a_throwaway_development_ca(built_image: BuiltImage) -> None:
    assert "SIGNING='development CA (throwaway" in built_image.build_info


def test_qcow2_holds_the_raw_disk(built_image: BuiltImage) -> None:
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(built_image.artifact("img")),
                              str(built_image.artifact("qcow2"))], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
