"""The console runner fails loudly, with QEMU's own words attached, instead of waiting forever."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_tcg_unless_kvm_is_asked_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = VmSpec(tmp_path / "k", tmp_path / "i", tmp_path / "r", tmp_path / "d", "boot=macula")
    monkeypatch.delenv("MACULAOS_QEMU_ACCEL", raising=False)
    cmd = qemu_command(spec)
    assert cmd[cmd.index("-accel") + 1] == "tcg" and "kvm" not in cmd
    monkeypatch.setenv("MACULAOS_QEMU_ACCEL", "kvm")
    assert " ".join(qemu_command(spec)).count("-accel") == 2  # kvm first, TCG when KVM cannot start
    assert f"file={tmp_path / 'r'},format=raw,if=virtio,readonly=on" in qemu_command(spec)
