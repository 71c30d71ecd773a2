"""The arm64 image (seed 4.11.1): built on this amd64 machine under qemu-user-static, then booted in
qemu-system-aarch64 (`virt` board, Cortex-A57, Debian's AAVMF UEFI firmware) under TCG to the same console
markers as amd64. Run only when asked (`pytest -m arm64 tests/image`): the build and the boot take tens of
minutes here (docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from maculaos.image.vm import Vm, VmSpec, uefi_vars_copy
from tests.image.conftest import BuiltImage, boot_timeout
from tests.image.test_boot import CONFIG, _data_disk, _probe

pytestmark = [pytest.mark.image, pytest.mark.arm64, pytest.mark.timeout(7200)]

CMDLINE = "boot=macula rauc.slot=A console=ttyAMA0 macula.root=/dev/vda macula.data=/dev/vdb macula.mode=disk"
ELF_MACHINE_AARCH64 = 0xB7


def _cat(image: BuiltImage, path: str) -> bytes:
    return subprocess.run(["unsquashfs", "-cat", str(image.squashfs), path], capture_output=True,
                          check=True).stdout


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", data[:16]
    return int.from_bytes(data[18:20], "little")


def test_arm64_outputs_are_arm64_through_and_through(built_arm64_image: BuiltImage) -> None:
    image = built_arm64_image
    assert "MACULAOS_ARCH=arm64" in image.build_info.splitlines()
    for fmt in ("squashfs", "kernel", "initrd", "rootfs.tar.zst", "raucb", "build-info", "cert.pem"):
        assert image.artifact(fmt).stat().st_size > 0, fmt
    for fmt in ("img", "qcow2", "iso"):                     # no arm64 boot loader yet: said, not faked
        assert not image.artifact(fmt).exists(), fmt
    listed = (image.out / "SHA256SUMS").read_text()
    assert image.artifact("raucb").name in listed and ".iso" not in listed
    # The kernel: an arm64 Linux Image ("ARMd" at 0x38), plain or inside an EFI zboot wrapper ("zimg").
    kernel = image.kernel.read_bytes()[:0x40]
    assert kernel[0x38:0x3C] == b"ARM\x64" or kernel[4:8] == b"zimg", kernel
    # The image's own programs and the compiled Python wheels are aarch64.
    assert _elf_machine(_cat(image, "usr/bin/python3.13")[:64]) == ELF_MACHINE_AARCH64
    cores = subprocess.run(["unsquashfs", "-lc", str(image.squashfs), "usr/lib/python3/dist-packages/pydantic_core"],
                           capture_output=True, text=True, check=True).stdout.split()
    so = [p.split("squashfs-root/", 1)[1] for p in cores if p.endswith(".so")]
    assert so and all("aarch64" in p for p in so), so
    assert _elf_machine(_cat(image, so[0])[:64]) == ELF_MACHINE_AARCH64
    # RAUC: the image accepts exactly the bundles it is shipped with (compatible maculaos-arm64).
    assert b"compatible=maculaos-arm64\n" in _cat(image, "etc/rauc/system.conf")
    info = subprocess.run(["rauc", "info", "--no-verify", "--output-format=shell", str(image.artifact("raucb"))],
                          capture_output=True, text=True, check=True).stdout
    assert "RAUC_MF_COMPATIBLE='maculaos-arm64'" in info, info
    # The operator pre-loaded for k3s is the arm64 build of it.
    listing = subprocess.run(["unsquashfs", "-lc", str(image.squashfs), "usr/share/maculaos/k3s/images"],
                             capture_output=True, text=True, check=True).stdout
    assert "maculaos-operator-0.1.0-arm64.tar" in listing, listing


def test_arm64_boots_in_qemu_virt_to_ready_and_applies_config(built_arm64_image: BuiltImage,
                                                              tmp_path: Path) -> None:
    data = _data_disk(tmp_path, CONFIG)
    spec = VmSpec(built_arm64_image.kernel, built_arm64_image.initrd, built_arm64_image.squashfs, data, CMDLINE,
                  arch="arm64", uefi_vars=uefi_vars_copy(tmp_path / "vars.fd", "arm64"))
    # TCG emulates arm64 on x86 more slowly than x86 itself: three times the amd64 boots' wait.
    with Vm(spec, tmp_path / "boot.log") as vm:
        ready = vm.wait_for(r"MACULAOS-READY version=(\S+) mode=(\S+) apply=(\S+)", 3 * boot_timeout())
        ready_seconds = vm.elapsed()
        assert ready.groups() == ("0.1.0", "disk", "success"), vm.tail()
        vm.wait_for(r"PROBE-DONE", 3 * boot_timeout(), ready.end())
        report = _probe(vm, ready.end())
        vm.wait_exit(3 * boot_timeout())
    print(f"arm64 MACULAOS-READY after {ready_seconds:.0f} s")
    assert report["root"] == "squashfs" and report["etc"] == "overlay", report
    assert report["usr-write"] == "refused", report
    assert report["apply"] == "success/active", report
    assert report["nft-table"] == "loaded", report
    assert report["config-realm"] == "io.macula.imagetest", report
    assert report["airgap-image"] == "maculaos-operator-0.1.0-arm64.tar", report
    assert report["ssh"] == "active" and report["nats"] == "active", report
    assert report["failed-units"] == "", report
