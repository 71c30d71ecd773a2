"""The live/installer ISO booted the way a machine boots it. (1) SeaBIOS, the ISO in a CD drive (El Torito)
and an empty disk: the unattended install writes the disk and powers off; then the disk alone boots
through its own GRUB into slot A with the config the install put on it. (2) OVMF (UEFI), the ISO as a
USB stick (a plain disk: the hybrid GPT's EFI partition): the live system runs from the medium with /etc
and /var in RAM.

The ISOs booted here are made by the build's own ISO builder from the same build, with words the test
needs added to the menu (console=ttyS0 last, so that /dev/console is the serial line the test reads) and,
for (1), an install config on the medium: a custom ISO as `maculaos image iso --install-config` makes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from maculaos.image.definition import load_definition
from maculaos.image.disk import MIB, boot_environment, partition_table
from maculaos.image.iso import IsoInputs, build_iso, inputs_for
from maculaos.image.vm import Vm, VmSpec, uefi_vars_copy
from tests.image.conftest import EXTENSION, PROFILES, REPO, BuiltImage, boot_timeout
from tests.image.test_boot import _probe

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]

SERIAL = "console=ttyS0 macula.rescue_timeout=1"
CONFIG = {"maculaos": {"mesh": {"roles": {"bootstrap": True}, "realm": "io.macula.isotest"}}}


def _iso_inputs(image: BuiltImage, default: str = "live", extra_cmdline: str = "",
                install_config: Path | None = None) -> IsoInputs:
    definition = load_definition(REPO / "image-build" / "maculaos.yaml", [EXTENSION]).select(PROFILES)
    epoch = int(next(line.split("=", 1)[1].strip("'") for line in image.build_info.splitlines()
                     if line.startswith("BUILD_EPOCH=")))
    return inputs_for(definition, image.out, epoch, default, extra_cmdline, install_config)


def test_iso_is_in_the_build_and_its_checksums(built_image: BuiltImage) -> None:
    iso = built_image.artifact("iso")
    assert iso.name == "macula-os-0.1.0-amd64.iso"
    assert iso.name in (built_image.out / "SHA256SUMS").read_text()
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(iso)], capture_output=True, text=True)
    assert label.stdout.strip() == "MACULAOS_0_1_0_AMD64"
    # The shipped ISO is what the builder makes of this build (the boot tests below add only menu words).
    rebuilt = build_iso(_iso_inputs(built_image), built_image.out / "rebuilt.iso.tmp")
    try:
        assert rebuilt.read_bytes() == iso.read_bytes()
    finally:
        rebuilt.unlink()


def test_iso_installs_unattended_onto_an_empty_disk_which_then_boots_alone(
        built_image: BuiltImage, tmp_path: Path) -> None:
    config = tmp_path / "install.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    iso = build_iso(_iso_inputs(built_image, default="install", extra_cmdline=SERIAL, install_config=config),
                    tmp_path / "install.iso")
    target = tmp_path / "target.img"
    with target.open("wb") as f:
        f.truncate(4096 * MIB)

    # 1. SeaBIOS boots the CD (El Torito); the install entry installs onto the only disk, then powers off.
    cdrom = ("-drive", f"file={iso},media=cdrom,if=ide,readonly=on")
    spec = VmSpec(None, None, None, None, disk=target, extra_args=cdrom)
    with Vm(spec, tmp_path / "install.log") as vm:
        vm.wait_for(r"Booting `Install MaculaOS 0\.1\.0 to a disk'", boot_timeout())
        vm.wait_for(r"maculaos: root /dev/loop\d+ \(/dev/sr0:/live/root\.squashfs\)", boot_timeout())
        vm.wait_for(r"MACULAOS-INSTALLED target=/dev/vda version=0\.1\.0", boot_timeout())
        vm.wait_exit(boot_timeout())
        install_log = vm.console
    assert "MACULAOS-INSTALL-FAILED" not in install_log
    assert "PROBE-DONE" not in install_log                        # the probe does not run while installing
    table = partition_table(target)
    assert [p.name for p in table.partitions] == ["bios", "ESP", "rootfs-A", "rootfs-B", "data"]
    assert table.part("data").size_mib == 4096 - table.part("data").start_mib - 1   # the rest of the disk
    assert boot_environment(target, {"EXTRA_CMDLINE": SERIAL})["A_OK"] == "1"

    # 2. The installed disk alone (no medium): firmware -> its GRUB -> slot A, the config applied.
    with Vm(VmSpec.for_disk(target), tmp_path / "installed.log") as vm:
        vm.wait_for(r"Booting `MaculaOS 0\.1\.0 \(slot A\)'", boot_timeout())
        vm.wait_for(r"MACULAOS-MARK-GOOD slot=A", boot_timeout())
        ready = vm.wait_for(r"MACULAOS-READY version=(\S+) mode=(\S+) apply=(\S+)", boot_timeout())
        assert ready.groups() == ("0.1.0", "disk", "success"), vm.tail()
        report = _probe(vm)
        vm.wait_exit(boot_timeout())
    assert report["rauc-booted"] == "A" and report["rauc-a"] == "good", report
    assert report["var"].startswith("/dev/vda5"), report
    assert report["config-realm"] == "io.macula.isotest" and report["bootstrap-unit"] == "enabled", report
    assert report["root"] == "squashfs" and report["usr-write"] == "refused", report
    assert report["failed-units"] == "", report


def test_iso_as_a_usb_stick_boots_live_under_uefi(built_image: BuiltImage, tmp_path: Path) -> None:
    stick = build_iso(_iso_inputs(built_image, extra_cmdline=SERIAL), tmp_path / "stick.img")
    with Vm(VmSpec.for_disk(stick, uefi_vars_copy(tmp_path / "vars.fd")), tmp_path / "live.log") as vm:
        vm.wait_for(r"Booting `MaculaOS 0\.1\.0 live", boot_timeout())
        vm.wait_for(r"maculaos: root /dev/loop\d+ \(/dev/vda:/live/root\.squashfs\) .*, mode live", boot_timeout())
        ready = vm.wait_for(r"MACULAOS-READY version=(\S+) mode=(\S+)", boot_timeout())
        assert ready.groups() == ("0.1.0", "live"), vm.tail()
        report = _probe(vm)
        vm.wait_exit(boot_timeout())
    assert report["root"] == "squashfs" and report["etc"] == "overlay", report
    assert report["var"].startswith("tmpfs"), report                # RAM only: nothing written to the stick
    assert report["usr-write"] == "refused", report
    assert report["failed-units"] == "", report
