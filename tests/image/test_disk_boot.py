"""The raw disk image booted the way a machine boots it: firmware -> GRUB -> slot A. One test, three boots
(each costs minutes under TCG), the node provisioned as an installer leaves it (config.yaml with the tests'
SSH key and console password on the data partition, the disk 512 MiB larger than the image, as a bigger disk
it was written onto):
1. SeaBIOS boots slot A on a first boot: the data partition and its ext4 grow to the end of the disk, the
   config is applied (everything a person at the console would check), slot A is marked good, and RAUC
   there installs the build's own bundle into slot B;
2. with OVMF (UEFI), a broken slot B first in ORDER is tried three times and GRUB falls back to A, which
   stays good, with the node's identity, /etc and /var as the first boot left them; its probe asks for a
   factory reset with `maculaos factory-reset`, then hangs the machine (a kernel crash that never reboots
   by itself), and the watchdog config.yaml armed (QEMU's i6300esb) resets it;
3. that boot starts the factory reset and loses its power before the reset is through; the next boot
   performs it whole.
Slot B booting a build RAUC installed, and its commit, are the real node's upgrade story
(tests/image/test_real_node.py)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from maculaos.image.disk import boot_environment, esp_get, esp_put, partition_table
from maculaos.image.vm import Vm, VmSpec, uefi_vars_copy
from maculaos.image.vmnode import ONE_WATCHDOG, WATCHDOG_DEVICE, provision_disk
from tests.image.conftest import BuiltImage, boot_timeout, note_figure
from tests.image.test_boot import CONFIG, PASSWORD_HASH, _probe, _ssh_key

pytestmark = [pytest.mark.image, pytest.mark.timeout(5400)]

# The serial console last (so /dev/console is the serial line the test reads); failed roots reboot at once.
RESCUE = "macula.rescue_timeout=1"
#: q35's chipset has a watchdog of its own (iTCO_wdt), which may come up first: the test's is QEMU's i6300esb
#: (ONE_WATCHDOG, as `maculaos dev vm` boots its VM).
TEST_CMDLINE = f"console=ttyS0 {RESCUE} {ONE_WATCHDOG}"
GROW_MIB = 512
#: config.yaml's maculaos.watchdog timeout, and the watchdog device every boot has (a PCI card QEMU emulates;
#: every VM node's, `maculaos dev vm`'s too). Not shorter: under TCG on a loaded machine a daemon-reload
#: holds PID 1 longer than 10 s, and a 10 s watchdog reset the healthy node then (seen on 2026-12-07).
WATCHDOG_SECONDS = 30
WATCHDOG = WATCHDOG_DEVICE


def _update_disk(bundle: Path, tmp_path: Path) -> Path:
    """A disk labelled MACULA-UPDATE holding the bundle: the probe installs it with RAUC."""
    folder, disk = tmp_path / "update", tmp_path / "update.img"
    folder.mkdir()
    shutil.copyfile(bundle, folder / "update.raucb")
    with disk.open("wb") as f:
        f.truncate(bundle.stat().st_size + 64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-L", "MACULA-UPDATE", "-d", str(folder), str(disk)], check=True)
    return disk


def _assert_provisioned_first_boot(first: dict[str, str]) -> None:
    """What a person at the console checks on a node's first boot with a config.yaml."""
    assert first["var-mark"] == "absent" and first["etc-mark"] == "absent", first
    assert first["usr-write"] == "refused", first
    assert first["root"] == "squashfs" and first["etc"] == "overlay", first
    assert first["apply"] == "success/active", first
    assert first["nft-table"] == "loaded", first                  # the agent's firewall table
    assert first["bootstrap-unit"] == "enabled", first           # the role config.yaml asked for
    assert first["config-realm"] == "io.macula.imagetest", first
    assert first["firstboot"] == "firstboot" and first["extension-file"] == "present", first
    assert first["user"] == "macula", first
    assert first["k3s"] == "not", first                            # "not included (...)", said plainly
    # Its unit is enabled in every image and skipped by its condition when the binary is not there.
    assert (first["k3s-unit"], first["k3s-condition"], first["k3s-active"]) == ("enabled", "no", "inactive"), first
    assert first["failed-units"] == "" and first["ordering-cycles"] == "0", first
    # Provisioned with a config.yaml: no wizard, its ports closed.
    assert (first["wizard"], first["wizard-home"], first["wizard-rule"]) == ("inactive", "000", "0"), first
    # What is inside the image (issue #6 contents), as a person at the console would check it:
    assert first["k3s-node-label"] == "1" and first["k3s-version-label"] == "0.1.0", first
    assert first["airgap-image"] == "maculaos-operator-0.1.0-amd64.tar", first   # copied to k3s's folders
    assert first["airgap-image-copy"] == "same" and first["airgap-manifest-copy"] == "same", first
    assert first["ssh"] == "active" and first["ssh-hostkey"].startswith("SHA256:"), first  # made at first boot
    assert first["ssh-rsa-key"] == "absent", first
    assert re.fullmatch(r"[0-9a-f]{32}", first["machine-id"]), first
    assert first["gateway-unit"] == "disabled", first             # no role service the config did not ask for
    # The bootstrap role's program is not in the image: its unit is skipped (not restarted in a loop) and
    # the agent's boot apply says so.
    assert (first["bootstrap-active"], first["bootstrap-condition"], first["bootstrap-restarts"]) == \
        ("inactive", "no", "0"), first
    assert first["apply-warning"] == "1", first
    # Its own name, made from its machine id, everywhere the name is written and on mDNS.
    assert re.fullmatch(r"macula-[0-9a-f]{8}", first["hostname"]), first
    assert first["hostname"] == first["etc-hostname"] == first["made-hostname"] == first["hosts-name"], first
    assert first["hostname-unit"] == "success" and first["mdns-host"] == f"{first['hostname']}.local", first
    # mDNS over IPv4 with IPv4 addresses only: no IPv6 address comes and goes under avahi's probes, so no
    # renaming after it takes its own echoed probe for another host's.
    assert (first["mdns-conflicts"], first["mdns-ipv6"]) == ("0", "0"), first
    assert first["nats"] == "active" and first["nats-listen"] == "127.0.0.1:4222,", first  # loopback only
    assert first["mdns-port"] == "6443" and first["mdns-version"] == "0.1.0", first
    assert first["mdns-roles"] == "peer,bootstrap" and first["mdns-realm"] == "io.macula.imagetest", first
    assert first["node-info-mode"] == "644" and first["motd-roles"] == "peer,bootstrap", first
    assert int(first["login-logo"]) >= 1, first                     # fastfetch's logo at an interactive login
    assert first["login-roles"] == "peer,bootstrap" and first["login-realm"] == "io.macula.imagetest", first
    assert first["ssh-login"] == "ssh-as-macula,sudo-root" and first["keys-file"] == "macula:600", first
    assert first["password"] == hashlib.sha256(f"{PASSWORD_HASH}\n".encode()).hexdigest()[:16], first
    # The node's rest-server for peers' mesh backups, from config.yaml, under the image's real systemd and
    # Debian's restic-rest-server: its users only, repositories on the data partition, port open to the
    # configured network alone.
    assert first["backup-server"] == "active" and first["backup-server-user"] == "restic-rest-server", first
    assert (first["backup-anonymous"], first["backup-wrong-password"], first["backup-create"]) == \
        ("401", "401", "200"), first
    assert first["backup-repo"] == "on-data" and first["backup-rule"] == "10.0.2.0/24", first
    # The node's git server from config.yaml: git http-backend behind lighttpd as www-data, repositories on
    # the data partition; anyone may clone, only its users push; its port open; Debian's lighttpd unit off.
    assert (first["git-server"], first["git-server-user"], first["lighttpd-unit"]) == \
        ("active", "www-data", "disabled"), first
    assert (first["git-clone"], first["git-push-anonymous"], first["git-push-user"]) == \
        ("ok", "refused", "accepted"), first
    assert first["git-repo"] == "on-data" and first["git-rule"] == "1", first


def test_disk_image_boots_from_grub_applies_its_config_marks_a_good_and_falls_back_from_a_broken_b(
        built_image: BuiltImage, tmp_path: Path) -> None:
    public, private = _ssh_key(tmp_path)
    config = CONFIG | {"ssh_authorized_keys": [public], "password_hash": PASSWORD_HASH,
                       "maculaos": CONFIG["maculaos"] | {"watchdog": {"timeout_seconds": WATCHDOG_SECONDS}}}
    built = partition_table(built_image.artifact("img"))
    disk = provision_disk(built_image.artifact("img"), tmp_path / "disk.img", config,
                          {"var/lib/maculaos-probe-key/id_ed25519": private}, GROW_MIB,
                          f"{RESCUE} {ONE_WATCHDOG}", menu_timeout=0)
    assert boot_environment(disk)["A_TRY"] == "0"
    update_disk = _update_disk(built_image.artifact("raucb"), tmp_path)
    update = ("-drive", f"file={update_disk},format=raw,if=virtio,readonly=on", *WATCHDOG)

    # 1. SeaBIOS -> GRUB (i386-pc core.img in the bios_grub partition) -> slot A, a first boot with its config;
    #    then RAUC installs the build's bundle (verity, signed by the build's CA, in the image's keyring) into B.
    with Vm(VmSpec.for_disk(disk, extra_args=update), tmp_path / "bios.log") as vm:
        vm.wait_for(r"Booting `MaculaOS 0\.1\.0 \(slot A\)'", boot_timeout())
        vm.wait_for(r"MACULAOS-MARK-GOOD slot=A", boot_timeout())
        ready = vm.wait_for(r"MACULAOS-READY version=(\S+) mode=(\S+) apply=(\S+)", boot_timeout())
        assert ready.groups() == ("0.1.0", "disk", "success"), vm.tail()
        first = _probe(vm)
        vm.wait_exit(boot_timeout())
    _assert_provisioned_first_boot(first)
    assert first["rauc-booted"] == "A" and first["rauc-a"] == "good", first
    assert first["rauc-b"] == "bad", first                      # empty: never installed
    assert first["esp"] == "vfat" and first["mark-good"] == "success", first
    # The watchdog config.yaml asked for: PID 1 pets the hardware one (no softdog stand-in).
    assert first["watchdog"] == f"{WATCHDOG_SECONDS}s", first
    assert first["watchdogs"] == "i6300ESB_timer,", first
    assert first["grubenv-a-try"] == "0", first                  # GRUB counted the try, RAUC reset it
    assert first["var"].startswith("/dev/vda5"), first           # the data partition of the same disk
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

    # 2. Slot B installed but broken: its kernel on the ESP, its partition zeroed, first in ORDER.
    b = partition_table(disk).part("rootfs-B")
    with disk.open("r+b") as f:
        f.seek(b.offset)
        f.write(bytes(1024 * 1024))
    esp_put(disk, {"B/vmlinuz": built_image.kernel, "B/initrd.img": built_image.initrd})
    # The probe of this boot also asks for a factory reset, as a person would (`maculaos factory-reset`), then
    # hangs the machine; the reset boot that follows skips both (the command line stays).
    boot_environment(disk, {"ORDER": "B A", "B_OK": "1", "B_TRY": "0", "EXTRA_CMDLINE":
                            f"{TEST_CMDLINE} macula.test.factory_reset=keep-data macula.test.hang"})
    uefi = VmSpec.for_disk(disk, uefi_vars_copy(tmp_path / "vars.fd"), extra_args=WATCHDOG)
    with Vm(uefi, tmp_path / "uefi.log") as vm:
        vm.wait_for(r"slot B did not boot in 3 tries: marked bad", boot_timeout() * 3)
        vm.wait_for(r"Booting `MaculaOS 0\.1\.0 \(slot A\)'", boot_timeout())
        vm.wait_for(r"MACULAOS-READY", boot_timeout())
        second = _probe(vm)
        # 3. The hang: a kernel crash with kernel.panic=0 never reboots by itself; the watchdog resets the
        #    machine. That boot starts the reset the command asked for (GRUB passes it to the normal boot)
        #    and loses its power before it is through; the next one performs it: the initramfs wipes the data
        #    partition's state without asking, /var/lib/data stays, the slots are untouched, and the node is
        #    a new one in first-boot mode; the one-shot flag is cleared.
        hang = vm.wait_for(r"PROBE-HANG kernel.panic=(\d+)", boot_timeout())
        panic = vm.wait_for(r"Kernel panic - not syncing", 60, hang.end())
        panicked = vm.elapsed()
        back = vm.wait_for(r"Booting `MaculaOS 0\.1\.0 \(slot A\)'", boot_timeout(), panic.end())
        reset_after = vm.elapsed() - panicked
        vm.wait_for(r"factory reset \(keep-data\) asked for", boot_timeout(), panic.end())   # GRUB says it first
        # The power cut while the reset is under way: its renames and delete take under a second here, so
        # the cut lands in them or soon after, always before the flag is cleared (the unit tests cut it
        # after the first renames exactly).
        vm.wait_for(r"MACULAOS-FACTORY-RESET: wipes", boot_timeout(), back.end())
        vm.stop()
        console = vm.console
    assert "MACULAOS-FACTORY-RESET-DONE" not in console[back.end():], console[-3000:]
    note_figure("factory reset: power cut " + ("after" if "MACULAOS-FACTORY-RESET: done" in console[back.end():]
                                               else "before") + " the initramfs's reset finished")
    with Vm(VmSpec.for_disk(disk, tmp_path / "vars.fd", extra_args=WATCHDOG), tmp_path / "reset.log") as vm:
        vm.wait_for(r"factory reset \(keep-data\) asked for", boot_timeout())
        vm.wait_for(r"MACULAOS-FACTORY-RESET: done", boot_timeout())
        vm.wait_for(r"MACULAOS-FACTORY-RESET-DONE", boot_timeout())
        vm.wait_for(r"MACULAOS-READY", boot_timeout())
        reset = _probe(vm)
        vm.wait_exit(boot_timeout())
    # One failed root per try (GRUB's own lines show twice under OVMF, which mirrors its console to serial).
    failures = re.findall(r"MACULAOS-BOOT-FAILED: cannot mount /dev/vda4 as squashfs", console[:hang.start()])
    assert len(failures) == 3, console[-3000:]
    assert console.index("marked bad, trying the next slot") > console.rindex("MACULAOS-BOOT-FAILED")
    assert second["rauc-booted"] == "A" and second["rauc-a"] == "good" and second["rauc-b"] == "bad", second
    assert (second["data-part-mib"], second["data-fs-mib"]) == (first["data-part-mib"], first["data-fs-mib"])
    assert (second["data-grown"], second["grow-data"]) == ("0", "success"), second   # nothing left to grow
    # /var and /etc kept, and the node's identity made once: the same host key, machine id and name.
    assert second["var-mark"] == "present" and second["etc-mark"] == "present", second
    assert second["usr-write"] == "refused" and second["failed-units"] == "", second
    assert second["ssh-hostkey"] == first["ssh-hostkey"] and second["machine-id"] == first["machine-id"], second
    assert second["hostname"] == first["hostname"] and second["mdns-host"] == first["mdns-host"], second
    assert second["mdns-conflicts"] == "0", second
    assert second["password"] == first["password"], second
    assert second["backup-server"] == "active" and second["backup-repo"] == "on-data", second
    assert second["factory-reset-scheduled"] == "keep-data", second
    # The watchdog, not the panic timer, brought the machine back: the kernel was told never to reboot.
    assert second["watchdog"] == f"{WATCHDOG_SECONDS}s" and hang.group(1) == "0", (second, hang.group(0))
    assert "Rebooting in" not in console[panic.start():back.start()], console[panic.start():back.start()]
    note_figure(f"watchdog: a hung node ({WATCHDOG_SECONDS} s timeout, i6300esb) back in GRUB {reset_after:.0f} s "
                "after its kernel crashed")
    assert (reset["var-mark"], reset["etc-mark"], reset["data-kept"]) == ("absent", "absent", "kept"), reset
    assert reset["machine-id"] != second["machine-id"] and reset["ssh-hostkey"] != second["ssh-hostkey"], reset
    assert (reset["rauc-booted"], reset["rauc-a"], reset["rauc-b"]) == ("A", "good", "bad"), reset
    assert (reset["wizard"], reset["wizard-home"]) == ("active", "200"), reset        # first-boot mode
    assert reset["factory-reset-done"] == "success/yes" and reset["failed-units"] == "", reset
    assert reset["ordering-cycles"] == "0" and reset["watchdog"] == "0", reset     # config.yaml went too
    env = boot_environment(disk)
    assert (env["A_OK"], env["A_TRY"], env["B_OK"], env["B_TRY"]) == ("1", "0", "0", "0"), env
    assert "FACTORY_RESET" not in boot_environment(disk), boot_environment(disk)
