"""maculaos.watchdog on a sandbox host root, through the boot's `maculaos agent apply --once`: the
system.conf drop-in, the softdog fallback where the machine has no watchdog device, the device chosen
where it has two, bad values that change nothing; and, on a running system, systemd re-executed only when
something changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from maculaos.host.config import config_file
from maculaos.host.nodeconfig import read_node_config
from maculaos.host.systemd import Systemd
from maculaos.host.watchdog import DROP_IN, SOFTDOG_LOAD, apply_watchdog
from tests.host.test_oneshot import apply_once


def set_watchdog(host_root: Path, watchdog: object) -> None:
    config = yaml.safe_load(config_file(host_root).read_text())
    config["maculaos"]["watchdog"] = watchdog
    config_file(host_root).write_text(yaml.safe_dump(config))


def plant_watchdog_device(host_root: Path, identity: str, name: str = "watchdog0") -> None:
    """What the kernel shows of a watchdog driver in /sys/class/watchdog (i6300esb in a QEMU VM)."""
    device = host_root / "sys/class/watchdog" / name
    device.mkdir(parents=True)
    (device / "identity").write_text(f"{identity}\n")


def test_no_hardware_watchdog_falls_back_to_softdog(host_root: Path, netns_nft: str) -> None:
    set_watchdog(host_root, {"timeout_seconds": 30})
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 0, result.stderr
    assert "watchdog 30 s on softdog (no hardware watchdog found) (updated)" in result.stdout
    assert (host_root / DROP_IN).read_text() == (
        "# Written by maculaos from config.yaml's maculaos.watchdog. Do not edit.\n[Manager]\n"
        "RuntimeWatchdogSec=30s\nRebootWatchdogSec=600s\n")
    assert (host_root / SOFTDOG_LOAD).read_text().splitlines()[-1] == "softdog"
    again = apply_once(host_root, netns_nft).stdout
    assert "watchdog 30 s on softdog (no hardware watchdog found) (unchanged)" in again


def test_a_hardware_watchdog_needs_no_softdog_and_disabling_removes_everything(host_root: Path,
                                                                                netns_nft: str) -> None:
    set_watchdog(host_root, {"timeout_seconds": 20})
    assert apply_once(host_root, netns_nft).returncode == 0  # no device yet: softdog
    plant_watchdog_device(host_root, "i6300ESB timer")
    result = apply_once(host_root, netns_nft)
    assert "watchdog 20 s on i6300ESB timer (updated)" in result.stdout
    assert not (host_root / SOFTDOG_LOAD).exists() and "RuntimeWatchdogSec=20s" in (host_root / DROP_IN).read_text()
    set_watchdog(host_root, {"enabled": False, "timeout_seconds": 20})
    assert "watchdog off (updated)" in apply_once(host_root, netns_nft).stdout
    assert not (host_root / DROP_IN).exists()


def test_softdog_loaded_by_the_fallback_is_not_mistaken_for_hardware(host_root: Path, netns_nft: str) -> None:
    set_watchdog(host_root, {})
    plant_watchdog_device(host_root, "Software Watchdog")  # softdog itself, loaded at the last boot
    result = apply_once(host_root, netns_nft)
    assert "watchdog 60 s on softdog (no hardware watchdog found)" in result.stdout
    assert (host_root / SOFTDOG_LOAD).exists()


def test_the_device_is_chosen_where_the_machine_has_two(host_root: Path, netns_nft: str) -> None:
    """q35's chipset timer and an added i6300esb: systemd pets /dev/watchdog0 unless told otherwise, and the
    summary names the device with its driver, so a person sees which one it is this boot."""
    plant_watchdog_device(host_root, "iTCO_wdt")
    plant_watchdog_device(host_root, "i6300ESB timer", "watchdog1")
    set_watchdog(host_root, {"timeout_seconds": 30})
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 0, result.stderr
    assert ("watchdog 30 s on /dev/watchdog0 (iTCO_wdt), one of 2 (/dev/watchdog1 i6300ESB timer: "
            "maculaos.watchdog.device chooses) (updated)") in result.stdout
    assert "WatchdogDevice" not in (host_root / DROP_IN).read_text()
    set_watchdog(host_root, {"timeout_seconds": 30, "device": "/dev/watchdog1"})
    result = apply_once(host_root, netns_nft)
    assert "watchdog 30 s on /dev/watchdog1 (i6300ESB timer) (updated)" in result.stdout
    assert (host_root / DROP_IN).read_text() == (
        "# Written by maculaos from config.yaml's maculaos.watchdog. Do not edit.\n[Manager]\n"
        "RuntimeWatchdogSec=30s\nRebootWatchdogSec=600s\nWatchdogDevice=/dev/watchdog1\n")
    assert not (host_root / SOFTDOG_LOAD).exists()
    assert "(unchanged)" in apply_once(host_root, netns_nft).stdout


def test_a_chosen_device_the_machine_lacks_is_said(host_root: Path, netns_nft: str) -> None:
    plant_watchdog_device(host_root, "iTCO_wdt")
    set_watchdog(host_root, {"device": "/dev/watchdog3"})
    result = apply_once(host_root, netns_nft)
    assert "watchdog 60 s on /dev/watchdog3 (not found on this machine: systemd has nothing to pet)" in result.stdout
    assert "WatchdogDevice=/dev/watchdog3" in (host_root / DROP_IN).read_text()  # it may appear by the next boot
    set_watchdog(host_root, {"device": "/dev/watchdog-board"})  # a udev rule's name: said as it is
    assert "watchdog 60 s on /dev/watchdog-board (updated)" in apply_once(host_root, netns_nft).stdout


@pytest.mark.parametrize(("watchdog", "message"), [
    ({"timeout_seconds": 1}, "maculaos.watchdog.timeout_seconds: Input should be greater than or equal to 5"),
    ({"device": "watchdog1"}, "maculaos.watchdog.device must be a watchdog device's path under /dev, such as "
                              "/dev/watchdog1"),
    ({"device": "/dev/watchdog1\nRuntimeWatchdogSec=0"}, "maculaos.watchdog.device must be a watchdog device's"),
    ({"timeout_seconds": "sixty"}, "maculaos.watchdog.timeout_seconds: Input should be a valid integer"),
    ({"timeout": 30}, "maculaos.watchdog.timeout: not a known key"),
    ("on", "maculaos.watchdog must be a mapping"),
])
def test_a_bad_value_is_said_and_changes_nothing(host_root: Path, netns_nft: str, watchdog: object,
                                                 message: str) -> None:
    set_watchdog(host_root, {"timeout_seconds": 45})
    assert apply_once(host_root, netns_nft).returncode == 0
    before = (host_root / DROP_IN).read_text(), (host_root / SOFTDOG_LOAD).read_text()
    set_watchdog(host_root, watchdog)
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 0, result.stderr  # the rest of the boot's apply goes on
    assert message in result.stderr and "the watchdog is left as it was" in result.stderr
    assert ((host_root / DROP_IN).read_text(), (host_root / SOFTDOG_LOAD).read_text()) == before
    assert "mesh roles peer" in result.stdout


def test_a_running_system_is_reexecuted_only_when_the_drop_in_changed(host_root: Path, tmp_path: Path) -> None:
    """PID 1 reads system.conf only when it starts. systemctl here is a recorder: this machine's PID 1 is
    not to be re-executed by a test (a VM test does it for real)."""
    log = tmp_path / "systemctl.log"
    recorder = tmp_path / "systemctl"
    recorder.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    recorder.chmod(0o755)
    systemd = Systemd(host_root, live=True, systemctl=str(recorder))
    plant_watchdog_device(host_root, "iTCO_wdt")  # live softdog would modprobe on this machine
    set_watchdog(host_root, {"timeout_seconds": 30})
    assert apply_watchdog(host_root, read_node_config(host_root), systemd).changed
    assert apply_watchdog(host_root, read_node_config(host_root), systemd).changed is False
    set_watchdog(host_root, {"timeout_seconds": 40})
    assert apply_watchdog(host_root, read_node_config(host_root), systemd).changed
    set_watchdog(host_root, {"timeout_seconds": 40, "device": "/dev/watchdog0"})  # the device is PID 1's too
    assert apply_watchdog(host_root, read_node_config(host_root), systemd).changed
    assert log.read_text().splitlines() == ["daemon-reexec"] * 3
