"""Recovery mode from a running node and in the boot: `maculaos recovery reboot`'s one-shot flag in a real
GRUB environment (grub-editenv) and the grub.cfg that reads it, the initramfs preparing a recovery boot's
/etc (run by sh on a sandbox), and what the recovery system tells the console. The VM story is the real
node's last test (tests/image/test_real_node.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from maculaos.cli import main
from maculaos.host import recovery_boot
from maculaos.host.restic import Repository
from maculaos.image import grub
from tests.unit.grub_esp import grubenv, unsuitable

REPO = Path(__file__).parents[2]
INITRAMFS_SCRIPT = REPO / "image-build/overlay/usr/share/initramfs-tools/scripts/macula"


def _recovery(root: Path, *args: str) -> int:
    return main(["recovery", "reboot", "--host-root", str(root), *args])


def test_reboot_asks_grub_for_one_recovery_boot_and_leaves_the_slots_alone(
        esp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = grubenv(esp)
    assert _recovery(esp, "--no-reboot") == 0
    assert grubenv(esp) == before | {"RECOVERY": "once"}
    assert "next boot only" in capsys.readouterr().out
    assert _recovery(esp, "--cancel") == 0 and grubenv(esp) == before
    assert _recovery(esp, "--cancel") == 0
    assert "no recovery boot was asked for" in capsys.readouterr().out
    marker = esp / "rebooted"
    assert _recovery(esp, "--reboot-command", f"touch {marker}") == 0
    assert marker.exists() and grubenv(esp)["RECOVERY"] == "once"


def test_grub_cfg_boots_the_recovery_entry_once_when_asked() -> None:
    cfg = grub.grub_config("console=ttyS0")
    assert "RECOVERY" in cfg.split("load_env", 1)[1].splitlines()[0]
    block = cfg[cfg.index('if [ "$RECOVERY" = once ]'):cfg.index("fi", cfg.index('if [ "$RECOVERY" = once ]'))]
    # The flag is cleared in the environment before the kernel starts: a recovery boot that goes wrong is
    # followed by a normal one.
    assert "set default=recovery" in block and "set RECOVERY=\n" in block and "save_env RECOVERY" in block
    # Nor is it a try of the slot: the counters are saved only when no recovery boot was asked for.
    assert 'elif [ -z "$recovery_once" ]; then\n  save_env A_OK A_TRY B_OK B_TRY' in cfg
    assert cfg.count("save_env A_OK") == 1 and cfg.index(block) < cfg.index("save_env A_OK")
    recovery = cfg[cfg.index("--id recovery"):cfg.index("}", cfg.index("--id recovery"))]
    assert "macula.mode=recovery" in recovery and "$reset_args" not in recovery


@pytest.mark.parametrize("damage, says", [
    ("no-esp", "no GRUB environment at /boot/efi/grub/grubenv"),
    ("old-grub-cfg", "predates a recovery boot from the command"),
])
def test_a_node_whose_boot_loader_cannot_carry_it_is_told_and_nothing_changes(
        esp: Path, damage: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = grubenv(esp)
    with unsuitable(esp, damage):
        assert _recovery(esp, "--no-reboot") == 1
        said = capsys.readouterr().err
        assert says in said and "Recovery mode in the boot menu" in said
    assert grubenv(esp) == before


def test_the_initramfs_points_a_recovery_boots_etc_at_the_recovery_target(tmp_path: Path) -> None:
    """macula_recovery_etc fills the recovery boot's /etc upper layer (RAM) from the image's files."""
    upper = tmp_path / "upper"
    upper.mkdir()
    script = (f". {INITRAMFS_SCRIPT}\nmacula_log() {{ echo \"maculaos: $*\"; }}\n"
              f"rootmnt={REPO / 'image-build/overlay'}\nmacula_recovery_etc {upper}\n")
    subprocess.run(["sh", "-c", script], check=True, stdin=subprocess.DEVNULL, timeout=30)
    target = upper / "systemd/system/default.target"
    assert target.is_symlink() and str(target.readlink()) == "/usr/lib/systemd/system/maculaos-recovery.target"
    assert (REPO / "image-build/overlay/usr/lib/systemd/system/maculaos-recovery.target").is_file()
    sshd = (upper / "ssh/sshd_config.d/maculaos-recovery.conf").read_text()
    assert f"AuthorizedKeysFile {recovery_boot.KEYS_FILE}" in sshd and "PasswordAuthentication no" in sshd
    assert "--autologin root" in (upper / "systemd/system/serial-getty@.service.d/maculaos-recovery.conf").read_text()


@pytest.mark.parametrize("access, found, says", [
    (recovery_boot.Access("/dev/vda5", ["ssh-ed25519 AAAA k"]), ["10.0.2.15"], "SSH: ssh root@10.0.2.15"),
    (recovery_boot.Access("/dev/vda5", [], "config.yaml names no ssh_authorized_keys"), ["10.0.2.15"],
     "No SSH login: config.yaml names no ssh_authorized_keys. This console is logged in as root."),
    (recovery_boot.Access("/dev/vda5", ["ssh-ed25519 AAAA k"]), [], "No SSH login: no network address"),
    (recovery_boot.Access(None, [], "no data partition labelled MACULA_DATA"), ["10.0.2.15"],
     "the data partition (not found) is not mounted"),
])
def test_the_console_says_how_to_reach_the_recovery_system(access: recovery_boot.Access, found: list[str],
                                                            says: str) -> None:
    text = recovery_boot.console_text(access, found)
    assert text.startswith(f"MACULAOS-RECOVERY-READY address={','.join(found) or 'none'} keys={len(access.keys)}")
    assert says in text


@pytest.mark.parametrize("location, shown", [
    ("rest:http://shop:s3cret@10.0.2.2:8000/shop/node", "rest:http://10.0.2.2:8000/shop/node"),
    ("rest:https://10.0.2.2:8000/shop/node", "rest:https://10.0.2.2:8000/shop/node"),
    ("s3:https://key:secret@s3.example.net/bucket/node", "s3:https://s3.example.net/bucket/node"),
    ("/mnt/usb/repo", "/mnt/usb/repo"),
])
def test_a_repository_is_shown_without_the_credentials_a_url_may_carry(location: str, shown: str) -> None:
    assert Repository(location, "pw").display() == shown
