"""Factory reset from the command: the one-shot flag in a real GRUB environment (grub-editenv), what the
command refuses and says, and the initramfs's reset itself run by sh on a sandbox data partition (the
same functions the boot runs; the boot test in tests/image/test_disk_boot.py runs it on a VM)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from maculaos.cli import main
from maculaos.host import factory_reset
from maculaos.host.grubenv import GRUB_CFG
from tests.unit.grub_esp import grubenv, unsuitable

INITRAMFS_SCRIPT = Path(__file__).parents[2] / "image-build/overlay/usr/share/initramfs-tools/scripts/macula"
CMDLINE = "console=ttyS0 ro quiet"


def _reset(root: Path, *args: str) -> int:
    return main(["factory-reset", "--host-root", str(root), *args])


def test_the_command_sets_the_flag_the_boot_loader_reads_and_leaves_the_slots_alone(esp: Path) -> None:
    before = grubenv(esp)
    assert _reset(esp, "--confirm", "--no-reboot") == 0
    assert grubenv(esp) == before | {"FACTORY_RESET": "keep-data"}
    assert _reset(esp, "--confirm", "--wipe-data", "--no-reboot") == 0
    assert grubenv(esp)["FACTORY_RESET"] == "all"
    assert _reset(esp, "--cancel") == 0
    assert grubenv(esp) == before
    cfg = (esp / GRUB_CFG).read_text()
    normal = cfg[cfg.index('--id normal'):cfg.index("}", cfg.index('--id normal'))]
    assert "$reset_args" in normal and cfg.count("$reset_args") == 1     # the normal boot only
    assert "load_env" in cfg and "FACTORY_RESET" in cfg.split("load_env", 1)[1].splitlines()[0]


def test_without_confirm_it_says_what_would_go_and_changes_nothing(esp: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = grubenv(esp)
    assert _reset(esp, "--wipe-data") == 2
    said = capsys.readouterr().out
    assert "and /var/lib/data" in said and "again with --confirm" in said
    assert grubenv(esp) == before


def test_confirmed_it_reboots_with_the_configured_command(esp: Path) -> None:
    marker = esp / "rebooted"
    assert _reset(esp, "--confirm", "--reboot-command", f"touch {marker}") == 0
    assert marker.exists() and grubenv(esp)["FACTORY_RESET"] == "keep-data"


@pytest.mark.parametrize("damage, says", [
    ("no-esp", "no GRUB environment at /boot/efi/grub/grubenv"),
    ("old-grub-cfg", "predates factory reset from the command"),
])
def test_a_node_whose_boot_loader_cannot_carry_it_is_told_and_nothing_changes(
        esp: Path, damage: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = grubenv(esp)
    with unsuitable(esp, damage):
        assert _reset(esp, "--confirm", "--no-reboot") == 1
        assert says in capsys.readouterr().err
    assert grubenv(esp) == before


def _initramfs(data: Path, call: str, cmdline: str) -> None:
    """Run one of the initramfs script's functions with sh, the kernel command line given."""
    script = (f". {INITRAMFS_SCRIPT}\n"
              "macula_log() { echo \"maculaos: $*\"; }\n"
              f"macula_param() {{ value=$2; for arg in {cmdline}; do case \"$arg\" in \"$1=\"*) value=${{arg#*=}};; "
              "esac; done; echo \"$value\"; }\n"
              f"{call} {data}\n")
    subprocess.run(["sh", "-c", script], check=True, stdin=subprocess.DEVNULL, timeout=30)


def _data_partition(root: Path) -> Path:
    for path, text in {"var/lib/maculaos/config.yaml": "maculaos: {}\n", "var/lib/data/shop.db": "orders\n",
                       "var/lib/rancher/k3s/token": "t\n", "etc/upper/hostname": "shop-1\n"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mode, kept", [("keep-data", {"var/lib/data/shop.db"}), ("all", set())])
def test_the_initramfs_reset_confirmed_by_the_command_wipes_state_and_keeps_data_as_asked(
        tmp_path: Path, mode: str, kept: set[str]) -> None:
    data = _data_partition(tmp_path / "data")
    _initramfs(data, "macula_reset_on_boot", f"macula.factory_reset={mode} macula.factory_reset_confirmed=yes")
    assert _files(data) == kept


@pytest.mark.parametrize("cmdline, left", [
    # Asked by the command: the flag is still set (it is cleared only after a completed reset boot), so
    # the next boot finishes the renames and resets again: nothing of the old state stays.
    ("macula.factory_reset=keep-data macula.factory_reset_confirmed=yes", {"var/lib/data/shop.db"}),
    # From the boot menu, no one confirming the second time: the renamed state is dropped, the data kept.
    ("", {"var/lib/data/shop.db", "etc/upper/hostname"}),
])
def test_a_reset_cut_by_a_power_loss_never_loses_kept_data(tmp_path: Path, cmdline: str, left: set[str]) -> None:
    """The state after the first renames (data and var moved aside, etc not yet): what the next boot does."""
    data = _data_partition(tmp_path / "data")
    (data / ".reset").mkdir()
    (data / "var/lib/data").rename(data / ".reset/keep")
    (data / "var").rename(data / ".reset/old-var")
    _initramfs(data, "macula_reset_on_boot", cmdline)
    assert _files(data) == left


def test_an_editenv_in_the_nodes_mount_namespace_is_given_the_path_the_node_sees(esp: Path, tmp_path: Path) -> None:
    """The agent's grub-editenv runs in the node's mount namespace (the image's host wrapper), where the
    host root is `/`: it gets /boot/efi/grub/grubenv. The wrapper here plays that namespace by mapping `/`
    to the sandbox root, and refuses a path that is not the node's view."""
    wrapper = tmp_path / "host-grub-editenv"
    wrapper.write_text(f'#!/bin/sh\ncase "$1" in {esp}*) echo "not the node\'s view: $1" >&2; exit 9;; esac\n'
                       f'f="$1"; shift; exec grub-editenv "{esp}$f" "$@"\n')
    wrapper.chmod(0o755)
    assert factory_reset.schedule(esp, wipe_data=True, editenv=str(wrapper), seen_as=Path("/")) == "all"
    assert grubenv(esp)["FACTORY_RESET"] == "all"
    with pytest.raises(factory_reset.FactoryResetError, match="not the node's view"):
        factory_reset.schedule(esp, wipe_data=False, editenv=str(wrapper))
