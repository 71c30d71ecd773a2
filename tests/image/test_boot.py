"""Boot the built image in QEMU (TCG) and check what a person at the serial console would check."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from maculaos.devenv.processes import free_port
from maculaos.image.vm import Vm, VmSpec
from maculaos.image.vmnode import data_disk
from tests.image.conftest import BuiltImage, boot_timeout, check_ready_time, forwarded_http_answers

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]

CMDLINE = "boot=macula rauc.slot=A console=ttyS0 macula.root=/dev/vda macula.data=/dev/vdb"
#: The login user's console password ("at the shop"): `openssl passwd -6 -salt maculaostest 'at the shop'`.
PASSWORD_HASH = "$6$maculaostest$Fady5z.mwrt5LiIA74mbbhasTx3t1vdvC23Xc2f/hUSVa/acNUzSvW1IZjpgM/xwwgtGsJ0s4sDTbYLOhF9/I1"
#: The backup server's one user, probe:probe-pass (`htpasswd -nbB -C 5 probe probe-pass`).
BACKUP_USER = "probe:$2y$05$UfYRbF1ZKbtMKeCua.Z9KuKetmtlDSLRNg.V/wcgFH6l3Ix4oPtUm"
CONFIG = {"maculaos": {"mesh": {"roles": {"bootstrap": True, "gateway": False}, "realm": "io.macula.imagetest"},
                       "backup_server": {"port": 8000, "sources": ["10.0.2.0/24"], "htpasswd": BACKUP_USER},
                       "git_server": {"htpasswd": BACKUP_USER}}}


def _ssh_key(tmp_path: Path) -> tuple[str, bytes]:
    """A fresh ed25519 key pair: the public half goes into config.yaml, the private half onto the data
    disk for the probe (which logs in over SSH as the login user with it)."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "image-test", "-f", str(key)], check=True)
    return key.with_suffix(".pub").read_text().strip(), key.read_bytes()


def _data_disk(tmp_path: Path, config: dict[str, object] | None, size_mib: int = 512) -> Path:
    """A data partition as a provisioner would hand it over (config.yaml in var/lib/maculaos), with the
    tests' SSH key and console password, and the private key for the probe; with no config, a blank disk."""
    if config is None:
        return data_disk(tmp_path / "data.img", None, size_mib)
    public, private = _ssh_key(tmp_path)
    config = config | {"ssh_authorized_keys": [public], "password_hash": PASSWORD_HASH}
    return data_disk(tmp_path / "data.img", config, size_mib, {"var/lib/maculaos-probe-key/id_ed25519": private})


def _probe(vm: Vm, since: int = 0) -> dict[str, str]:
    """Waits for the probe's report and returns its key=value observations."""
    # journal+console lines carry a prefix ("[ 498.2] test-probe[559]: "): markers are not at line start.
    done = vm.wait_for(r"PROBE-DONE", boot_timeout(), since)
    report: dict[str, str] = {}
    for line in re.findall(r"PROBE (.*)$", vm.console[since:done.start()], re.MULTILINE):
        for word in re.findall(r"([a-z0-9-]+)=(\S*)", line):
            report[word[0]] = word[1]
    return report


def _spec(image: BuiltImage, data: Path | None, mode: str) -> VmSpec:
    return VmSpec(image.kernel, image.initrd, image.squashfs, data, f"{CMDLINE} macula.mode={mode}")


def test_blank_data_disk_is_formatted_and_boots_into_the_first_boot_wizard(built_image: BuiltImage,
                                                                          tmp_path: Path) -> None:
    data = _data_disk(tmp_path, None)
    # The default firewall seen from the host: the probe puts the same listener on an admitted port (the git
    # server's) and on the agent's metrics port (pods only), and waits for the test to look.
    admitted, closed = free_port(), free_port()
    spec = _spec(built_image, data, "disk")
    spec = dataclasses.replace(spec, forwards=((admitted, 23232), (closed, 9750)),
                               cmdline=f"{spec.cmdline} macula.test.firewall_check")
    with Vm(spec, tmp_path / "boot.log") as vm:
        vm.wait_for(r"formatting the blank data partition /dev/vdb", boot_timeout())
        vm.wait_for(r"MACULAOS-READY version=\S+ mode=disk apply=no-config", boot_timeout())
        check_ready_time(vm, "direct kernel boot, first boot on a blank data disk")
        listening = vm.wait_for(r"PROBE-FIREWALL-CHECK local-closed=(\d+) local-admitted=(\d+)", boot_timeout())
        from_host = (forwarded_http_answers(closed), forwarded_http_answers(admitted),
                     forwarded_http_answers(admitted, "/done"))
        report = _probe(vm)
        console = vm.console
        vm.wait_exit(boot_timeout())
    assert report["var"].startswith("/dev/vdb"), report
    assert report["firstboot"] == "firstboot", report              # /var/lib/maculaos made on a blank disk
    # A node with no config.yaml is never wide open: both listeners answer on the node itself, but from
    # outside only the admitted port does (the request came through QEMU's gateway, 10.0.2.2).
    assert listening.groups() == ("200", "200"), listening.group(0)
    assert from_host == (False, True, True), from_host
    assert report["firewall-done-from"] == "10.0.2.2", report
    assert report["failed-units"] == "" and report["ordering-cycles"] == "0", report
    assert re.fullmatch(r"macula-[0-9a-f]{8}", report["hostname"]) and report["hostname-unit"] == "success", report
    # First-boot mode: the wizard serves its page for this node on HTTPS (port 80 redirects), its ports are
    # open, the setup secret opens a session, and the console shows the code and the served certificate.
    assert (report["wizard"], report["wizard-home"], report["wizard-name"]) == ("active", "200", "1"), report
    assert report["wizard-redirect"] == "301,https://127.0.0.1/settings", report
    assert report["wizard-login"] == "303,https://127.0.0.1/settings", report
    assert report["wizard-rule"] != "0", report
    assert re.search(r"type the setup code: [A-Z2-9]{4}(-[A-Z2-9]{4}){3}", console), console[-3000:]
    shown = re.search(r"The wizard's certificate \(SHA-256\): ([0-9a-f]{64})", console)
    assert shown and shown.group(1) == report["wizard-fingerprint"], (report, console[-3000:])
    result = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(data)], capture_output=True, text=True)
    assert result.stdout.strip() == "MACULA_DATA"


def test_the_recovery_shell_opens_on_the_console_before_anything_is_mounted(built_image: BuiltImage,
                                                                            tmp_path: Path) -> None:
    """The boot menu's Recovery shell (the recovery mode with network and SSH is the real node's story)."""
    with Vm(_spec(built_image, None, "shell"), tmp_path / "shell.log") as vm:
        vm.wait_for(r"MACULAOS-RECOVERY: macula.mode=shell", boot_timeout())
        prompt = vm.wait_for(r"\(maculaos-recovery\) # ", 60)
        vm.send("echo shell-$((6 * 7))-ok\n")
        vm.wait_for(r"shell-42-ok", 60, prompt.end())
        vm.send("exit\n")
        vm.wait_exit(60)
