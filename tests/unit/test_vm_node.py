"""`maculaos dev vm`'s node without booting it: its disk provisioned from a build (a small disk of the real
layout) with the kernel told to leave q35's chipset watchdog out, and its QEMU command line with the VM
disk boot test's hardware watchdog, the disk, the forwarded ports and the memory asked."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from maculaos.image.disk import MIB, BootFiles, DiskInputs, boot_environment, build_disk
from maculaos.image.vm import NIC, qemu_command
from maculaos.image.vmnode import dev_node, disk_node


def _build(tmp_path: Path) -> Path:
    """A build's disk image: the real layout around stand-in payloads (as tests/unit/test_image_disk.py)."""
    squashfs, kernel, initrd = tmp_path / "root.squashfs", tmp_path / "vmlinuz", tmp_path / "initrd"
    squashfs.write_bytes(b"SQUASHFS STAND-IN" + bytes(MIB))
    kernel.write_bytes(b"KERNEL" * 1000)
    initrd.write_bytes(b"INITRD" * 1000)
    image = tmp_path / "maculaos.img"
    build_disk(DiskInputs(squashfs, BootFiles(kernel, initrd), "9.9.9", "boot=macula", esp_mib=64, slot_mib=64,
                          data_mib=32, seed="test", epoch=1_700_000_000), image)
    return image


def test_dev_vm_provisions_its_disk_once_without_the_chipset_watchdog(tmp_path: Path) -> None:
    image, disk = _build(tmp_path), tmp_path / "vm1" / "disk.img"
    disk.parent.mkdir()
    asked: list[str] = []

    def config() -> dict[str, Any]:
        asked.append("config")  # a bootstrap token each time: only for a new disk
        return {"maculaos": {"hostname": "vm1"}}

    spec = dev_node(image, disk, config, forwards=((2222, 22),), memory_mib=2048)
    assert boot_environment(disk)["EXTRA_CMDLINE"] == "console=ttyS0 modprobe.blacklist=iTCO_wdt"
    assert spec == dataclasses.replace(disk_node(disk, ((2222, 22),), 2048), extra_args=("-device", "i6300esb"))
    again = dev_node(image, disk, config, forwards=((2223, 22),))
    assert asked == ["config"] and again.disk == disk and again.forwards == ((2223, 22),)


def test_a_dev_vm_node_has_one_hardware_watchdog_after_its_nic(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")   # a disk from an earlier run: booted again as it is
    spec = dev_node(tmp_path / "unused.img", disk, dict, forwards=((2222, 22), (9751, 9750)), memory_mib=2048)
    cmd = qemu_command(spec, "kvm")
    assert cmd[0] == "qemu-system-x86_64" and cmd[cmd.index("-machine") + 1] == "q35"
    assert [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-device"] == ["i6300esb"]
    # After the NIC: the NIC keeps its PCI slot, so the guest's interface keeps its name (enp0s...).
    nic = next(i for i, arg in enumerate(cmd) if arg.startswith(f"user,id={NIC},"))
    assert cmd.index("i6300esb") > nic
    assert cmd[nic].endswith(",hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:9751-:9750")
    assert f"file={disk},format=raw,if=virtio" in cmd and cmd[cmd.index("-m") + 1] == "2048"
    assert "-no-reboot" not in cmd  # a node reboots: upgrades, and the watchdog's reset

