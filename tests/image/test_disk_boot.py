"""The raw disk image booted the way a machine boots it: firmware -> GRUB -> slot A. One test, four boots
(each costs minutes under TCG): SeaBIOS boots slot A, which is marked good, and RAUC there installs the
build's own bundle into slot B; SeaBIOS then boots B, which is marked good; then, with OVMF (UEFI), a
broken slot B first in ORDER is tried three times and GRUB falls back to A, which stays good; last, a
factory reset asked for there with `maculaos factory-reset` happens at the next boot. The disk is
512 MiB larger than the image (as a bigger disk it was written onto): the first boot grows the data
partition and its ext4 to the end of it, the others find nothing to do."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from maculaos.image.disk import boot_environment, esp_get, esp_put, partition_table
from maculaos.image.vm import Vm, VmSpec, uefi_vars_copy
from tests.image.conftest import BuiltImage, boot_timeout
from tests.image.test_boot import _probe

pytestmark = [pytest.mark.image, pytest.mark.timeout(5400)]

# The serial console last (so /dev/console is the serial line the test reads); failed roots reboot at once.
TEST_CMDLINE = "console=ttyS0 macula.rescue_timeout=1"
GROW_MIB = 512


def _copy(image: Path, tmp_path: Path) -> Path:
    disk = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    return disk


def _update_disk(bundle: Path, tmp_path: Path) -> Path:
    """A disk labelled MACULA-UPDATE holding the bundle: the probe installs it with RAUC."""
    folder, disk = tmp_path / "update", tmp_path / "update.img"
    folder.mkdir()
    shutil.copyfile(bundle, folder / "update.raucb")
    with disk.open("wb") as f:
        f.truncate(bundle.stat().st_size + 64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-L", "MACULA-UPDATE", "-d", str(folder), str(disk)], check=True)
    return disk


def test_disk_image_boots_from_grub_marks_a_good_updates_b_and_falls_back_from_a_broken_b(
        built_image: BuiltImage, tmp_path: Path) -> None:
    disk = _copy(built_image.artifact("img"), tmp_path)
    assert boot_environment(disk, {"EXTRA_CMDLINE": TEST_CMDLINE})["A_TRY"] == "0"
    built = partition_table(disk)
    subprocess.run(["qemu-img", "resize", "-q", "-f", "raw", str(disk), f"+{GROW_MIB}M"], check=True)
    update_disk = _update_disk(built_image.artifact("raucb"), tmp_path)
    update = ("-drive", f"file={update_disk},format=raw,if=virtio,readonly=on")

    # 1. SeaBIOS -> GRUB (i386-pc core.img in the bios_grub partition) -> slot A; then RAUC installs the
    #    build's bundle (verity, signed by the build's CA, in the image's keyring) into slot B.
    with Vm(VmSpec.for_disk(disk, extra_args=update), tmp_path / "bios.log") as vm:
        vm.wait_for(r"Booting `MaculaOS 0\.1\.0 \(slot A\)'", boot_timeout())
        vm.wait_for(r"MACULAOS-MARK-GOOD slot=A", boot_timeout())
        ready = vm.wait_for(r"MACULAOS-READY version=(\S+) mode=(\S+)", boot_timeout())
        assert ready.groups() == ("0.1.0", "disk")
        first = _probe(vm)
        vm.wait_exit(boot_timeout())
    assert first["rauc-booted"] == "A" and first["rauc-a"] == "good", first
    assert first["rauc-b"] == "bad", first                      # empty: never installed
    assert first["esp"] == "vfat" and first["mark-good"] == "success", first
    assert first["grubenv-a-try"] == "0", first                  # GRUB counted the try, RAUC reset it
    assert first["root"] == "squashfs" and first["usr-write"] == "refused", first
    assert first["var"].startswith("/dev/vda5"), first           # the data partition of the same disk
    assert first["failed-units"] == "", first
    # The data partition took the added space (less the backup GPT's last MiB), its ext4 all of it.
    data_mib = built.part("data").size_mib or 0
    grown = int(first["data-part-mib"])
    assert (first["data-grown"], first["grow-data"]) == ("2", "success"), first   # partition, file system
    assert data_mib + GROW_MIB - 1 <= grown <= data_mib + GROW_MIB + 1, (data_mib, first)
    assert grown - 1 <= int(first["data-fs-mib"]) <= grown, first
    table = partition_table(disk)
    assert table.part("data").size_mib == grown, table
    assert [p for p in table.partitions if p.name != "data"] == [p for p in built.partitions if p.name != "data"]
    # The update: RAUC wrote slot B (the next boot stayed A until the probe, as the agent, activated B);
    # the bundle's hook put the bundle's boot files on the ESP.
    assert (first["update"], first["update-installed-primary"]) == ("0", "rootfs.0"), first
    assert (first["update-primary"], first["update-b"]) == ("rootfs.1", "good"), first
    assert esp_get(disk, "B/vmlinuz") == built_image.kernel.read_bytes()
    assert esp_get(disk, "B/initrd.img") == built_image.initrd.read_bytes()
    env = boot_environment(disk)
    assert (env["A_OK"], env["A_TRY"], env["B_OK"], env["ORDER"]) == ("1", "0", "1", "B A"), env

    # 2. The updated slot B boots from its own kernel and squashfs and is marked good.
    with Vm(VmSpec.for_disk(disk), tmp_path / "updated.log") as vm:
        vm.wait_for(r"Booting `MaculaOS \S+ \(slot B\)'", boot_timeout())
        vm.wait_for(r"MACULAOS-MARK-GOOD slot=B", boot_timeout())
        vm.wait_for(r"MACULAOS-READY", boot_timeout())
        updated = _probe(vm)
        vm.wait_exit(boot_timeout())
    assert (updated["rauc-booted"], updated["rauc-a"], updated["rauc-b"]) == ("B", "good", "good"), updated
    assert updated["root"] == "squashfs" and updated["var-mark"] == "present", updated   # same data partition
    assert updated["failed-units"] == "", updated

    # 3. Slot B installed again but broken: its kernel on the ESP, its partition zeroed, first in ORDER.
    b = partition_table(disk).part("rootfs-B")
    with disk.open("r+b") as f:
        f.seek(b.offset)
        f.write(bytes(1024 * 1024))
    esp_put(disk, {"B/vmlinuz": built_image.kernel, "B/initrd.img": built_image.initrd})
    # The probe of this boot also asks for a factory reset, as a person would: `maculaos factory-reset`.
    boot_environment(disk, {"ORDER": "B A", "B_OK": "1", "B_TRY": "0",
                            "EXTRA_CMDLINE": f"{TEST_CMDLINE} macula.test.factory_reset=keep-data"})
    with Vm(VmSpec.for_disk(disk, uefi_vars_copy(tmp_path / "vars.fd")), tmp_path / "uefi.log") as vm:
        vm.wait_for(r"slot B did not boot in 3 tries: marked bad", boot_timeout() * 3)
        vm.wait_for(r"Booting `MaculaOS 0\.1\.0 \(slot A\)'", boot_timeout())
        vm.wait_for(r"MACULAOS-READY", boot_timeout())
        second = _probe(vm)
        vm.wait_exit(boot_timeout())
        console = vm.console
    # One failed root per try (GRUB's own lines show twice under OVMF, which mirrors its console to serial).
    failures = re.findall(r"MACULAOS-BOOT-FAILED: cannot mount /dev/vda4 as squashfs", console)
    assert len(failures) == 3, console[-3000:]
    assert console.index("marked bad, trying the next slot") > console.rindex("MACULAOS-BOOT-FAILED")
    assert second["rauc-booted"] == "A" and second["rauc-a"] == "good" and second["rauc-b"] == "bad", second
    assert second["var-mark"] == "present", second                # the same data partition as boot 1
    assert (second["data-part-mib"], second["data-fs-mib"]) == (first["data-part-mib"], first["data-fs-mib"])
    assert (second["data-grown"], second["grow-data"]) == ("0", "success"), second   # nothing left to grow
    env = boot_environment(disk)
    assert (env["A_OK"], env["A_TRY"], env["B_OK"], env["B_TRY"]) == ("1", "0", "0", "0"), env
    assert second["factory-reset-scheduled"] == "keep-data" and env["FACTORY_RESET"] == "keep-data", second

    # 4. The reset the command asked for: GRUB passes it to the normal boot, the initramfs wipes the data
    #    partition's state without asking, /var/lib/data stays, the slots are untouched, and the node is
    #    a new one in first-boot mode; the one-shot flag is cleared.
    boot_environment(disk, {"EXTRA_CMDLINE": TEST_CMDLINE})
    with Vm(VmSpec.for_disk(disk), tmp_path / "reset.log") as vm:
        vm.wait_for(r"factory reset \(keep-data\) asked for", boot_timeout())
        vm.wait_for(r"MACULAOS-FACTORY-RESET: done", boot_timeout())
        vm.wait_for(r"MACULAOS-FACTORY-RESET-DONE", boot_timeout())
        vm.wait_for(r"MACULAOS-READY", boot_timeout())
        reset = _probe(vm)
        vm.wait_exit(boot_timeout())
    assert (reset["var-mark"], reset["etc-mark"], reset["data-kept"]) == ("absent", "absent", "kept"), reset
    assert reset["machine-id"] != second["machine-id"] and reset["ssh-hostkey"] != second["ssh-hostkey"], reset
    assert (reset["rauc-booted"], reset["rauc-a"], reset["rauc-b"]) == ("A", "good", "bad"), reset
    assert (reset["wizard"], reset["wizard-home"]) == ("active", "200"), reset        # first-boot mode
    assert reset["factory-reset-done"] == "success/yes" and reset["failed-units"] == "", reset
    assert reset["ordering-cycles"] == "0", reset
    assert "FACTORY_RESET" not in boot_environment(disk), boot_environment(disk)
