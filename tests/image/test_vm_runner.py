"""The console runner fails loudly, with QEMU's own words attached, instead of waiting forever."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from maculaos.image import vm
from maculaos.image.vm import BootError, Vm, VmSpec, qemu_command

pytestmark = pytest.mark.image


def test_qemu_ending_early_is_a_boot_error_with_the_console(tmp_path: Path) -> None:
    not_a_kernel = tmp_path / "kernel"
    not_a_kernel.write_bytes(b"this is not a Linux kernel")
    (tmp_path / "initrd").write_bytes(b"")
    (tmp_path / "rootfs").write_bytes(b"\0" * 4096)
    spec = VmSpec(not_a_kernel, tmp_path / "initrd", tmp_path / "rootfs", None, "boot=macula", network=False)
    with Vm(spec) as vm, pytest.raises(BootError, match=r"QEMU ended \(exit 1\) before 'MACULAOS-READY'"):
        vm.wait_for("MACULAOS-READY", 60)


def test_tcg_runs_qemu64_on_one_vcpu_and_kvm_the_hosts_cpu(tmp_path: Path) -> None:
    spec = VmSpec(tmp_path / "k", tmp_path / "i", tmp_path / "r", tmp_path / "d", "boot=macula")
    cmd = qemu_command(spec)
    assert cmd[cmd.index("-accel") + 1] == "tcg" and cmd.count("-accel") == 1
    assert cmd[cmd.index("-cpu") + 1] == "qemu64" and cmd[cmd.index("-smp") + 1] == "1"
    kvm = qemu_command(spec, "kvm")
    assert kvm[kvm.index("-accel") + 1] == "kvm" and kvm[kvm.index("-cpu") + 1] == "host"
    assert f"file={tmp_path / 'r'},format=raw,if=virtio,readonly=on" in cmd


def test_kvm_only_where_a_probe_boot_ran_under_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The verdict is the probe's, kept per QEMU and host kernel; the variable overrides it both ways."""
    spec = VmSpec(tmp_path / "k", tmp_path / "i", tmp_path / "r", None, "boot=macula")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(vm, "probe_kvm", lambda kernel: False)
    monkeypatch.setattr(vm, "kvm_device_opens", lambda: True)
    monkeypatch.delenv("MACULAOS_QEMU_ACCEL", raising=False)
    vm.kvm_usable.cache_clear()
    assert vm.accelerator(spec) == "tcg"
    assert json.loads(vm.kvm_verdict_file().read_text())["kvm"] is False
    vm.kvm_verdict_file().write_text('{"kvm": true}')
    vm.kvm_usable.cache_clear()
    assert vm.accelerator(spec) == "kvm"
    monkeypatch.setenv("MACULAOS_QEMU_ACCEL", "tcg")
    assert vm.accelerator(spec) == "tcg"
    vm.kvm_usable.cache_clear()


def test_the_monitor_runs_a_command_and_cuts_the_cable(tmp_path: Path) -> None:
    """A machine held before its firmware starts (-S): the monitor answers, and set_link takes the cable
    out and puts it back (the guest would see its carrier go)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    spec = VmSpec.for_disk(disk, reboot=False, extra_args=("-S",))
    spec = dataclasses.replace(spec, monitor=tmp_path / "m.sock")
    with Vm(spec) as machine:
        deadline = time.monotonic() + 30
        while not spec.monitor.exists() and time.monotonic() < deadline:   # type: ignore[union-attr]
            time.sleep(0.1)
        assert "VM status: paused" in machine.monitor_command("info status")
        assert machine.monitor_command(f"set_link {vm.NIC} off") == ""
        assert machine.monitor_command("set_link no-such-nic off") == "Error: Device 'no-such-nic' not found\n"
        assert machine.monitor_command(f"set_link {vm.NIC} on") == ""
    with Vm(VmSpec.for_disk(disk, reboot=False, extra_args=("-S",))) as machine, \
            pytest.raises(BootError, match="without a monitor socket"):
        machine.monitor_command("info status")
