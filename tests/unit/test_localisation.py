"""The files the boot's apply writes from the first-boot keys: once, then nothing changes; an interface
with DHCP gets its own networkd file; without the section the image's DHCP default applies."""

from __future__ import annotations

from pathlib import Path

from maculaos.host.localisation import NETWORK_FILE, VCONSOLE, apply_localisation
from maculaos.host.nodeconfig import MaculaosConfig


def test_set_keys_are_written_once_and_absent_ones_leave_the_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / VCONSOLE).write_text("KEYMAP=us\n")
    config = MaculaosConfig.model_validate({"timezone": "UTC", "network": {"interface": "enp1s0"}})
    changed = apply_localisation(tmp_path, config)
    assert {str(p) for p in changed} == {"etc/localtime", "etc/timezone", str(NETWORK_FILE)}
    network = (tmp_path / NETWORK_FILE).read_text()
    assert "Name=enp1s0" in network and "DHCP=yes" in network and "Address" not in network
    assert (tmp_path / VCONSOLE).read_text() == "KEYMAP=us\n"
    assert apply_localisation(tmp_path, config) == []
    assert apply_localisation(tmp_path, MaculaosConfig()) == [NETWORK_FILE]
    assert not (tmp_path / NETWORK_FILE).exists() and (tmp_path / "etc/localtime").is_symlink()
