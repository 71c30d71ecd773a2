"""Each node's own hostname on a sandbox host root: config.yaml's wins, else one made once from the
machine id (or the first NIC's MAC) and kept on the data partition."""

from __future__ import annotations

from pathlib import Path

import pytest

from maculaos.host import hostname
from maculaos.host.hostname import LABEL, HostnameError, apply, choose, made_from, main, write_hosts

MACHINE_A = "0123456789abcdef0123456789abcdef"
MACHINE_B = "fedcba9876543210fedcba9876543210"
HOSTS = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"


def node(tmp_path: Path, machine_id: str | None = MACHINE_A, config: str | None = None) -> Path:
    """A host root as the image leaves it: the image's name, Debian's /etc/hosts, an empty data partition."""
    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("maculaos\n")
    (root / "etc/hosts").write_text(HOSTS)
    (root / "var/lib/maculaos").mkdir(parents=True)
    if machine_id is not None:
        (root / "etc/machine-id").write_text(machine_id + "\n")
    if config is not None:
        (root / "var/lib/maculaos/config.yaml").write_text(config)
    return root


def nic(root: Path, name: str, mac: str, hardware: bool = True) -> None:
    device = root / "sys/class/net" / name
    device.mkdir(parents=True)
    (device / "address").write_text(mac + "\n")
    if hardware:
        (device / "device").mkdir()


def test_a_node_without_a_configured_name_gets_its_own_and_keeps_it(tmp_path: Path) -> None:
    root = node(tmp_path)
    choice, changed = apply(root, live=False)
    assert changed and choice.name == made_from(MACHINE_A) and LABEL.match(choice.name)
    assert choice.name.startswith("macula-") and len(choice.name) == len("macula-") + 8
    assert MACHINE_A[:8] not in choice.name                      # a hash, not the machine id itself
    assert (root / "etc/hostname").read_text() == choice.name + "\n"
    assert (root / "var/lib/maculaos/hostname").read_text() == choice.name + "\n"
    hosts = (root / "etc/hosts").read_text().splitlines()
    assert hosts[:2] == ["127.0.0.1\tlocalhost", f"127.0.1.1\t{choice.name}"], hosts
    # The next boot: nothing to change; the name stays even if the machine id were made anew.
    assert apply(root, live=False) == (choice.__class__(choice.name, "kept in /var/lib/maculaos/hostname"), False)
    (root / "etc/machine-id").write_text(MACHINE_B + "\n")
    assert choose(root).name == choice.name


def test_two_nodes_of_one_image_get_different_names(tmp_path: Path) -> None:
    a = choose(node(tmp_path / "a", MACHINE_A)).name
    b = choose(node(tmp_path / "b", MACHINE_B)).name
    assert a != b and LABEL.match(a) and LABEL.match(b)


def test_config_yaml_hostname_wins_and_its_removal_returns_to_the_own_name(tmp_path: Path) -> None:
    root = node(tmp_path, config="maculaos:\n  hostname: shop-till-3\n")
    choice, _ = apply(root, live=False)
    assert (choice.name, choice.source, choice.problem) == ("shop-till-3", "config.yaml maculaos.hostname", "")
    assert (root / "etc/hostname").read_text() == "shop-till-3\n"
    assert (root / "etc/hosts").read_text().count("127.0.1.1") == 1
    (root / "var/lib/maculaos/config.yaml").write_text("maculaos:\n  hostname: ''\n")
    choice, changed = apply(root, live=False)
    assert changed and choice.name == made_from(MACHINE_A)
    hosts = (root / "etc/hosts").read_text()
    assert "shop-till-3" not in hosts and hosts.count("127.0.1.1") == 1


@pytest.mark.parametrize("bad", ["Shop-1", "-shop", "shop-", "shop_1", "a" * 64, "shop.example.com", "12", "[a]"])
def test_a_bad_configured_name_is_refused_by_name_and_the_own_name_is_used(
        tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = node(tmp_path, config=f"maculaos:\n  hostname: {bad}\n")
    choice = choose(root)
    assert choice.name == made_from(MACHINE_A)
    assert "maculaos.hostname" in choice.problem and "one DNS label" in choice.problem, choice.problem
    assert main([str(root)]) == 1                                  # the unit fails: seen in systemctl --failed
    out = capsys.readouterr()
    assert f"MACULAOS-HOSTNAME {made_from(MACHINE_A)}" in out.out and "maculaos.hostname" in out.err


def test_a_malformed_config_yaml_still_gives_the_node_a_name(tmp_path: Path) -> None:
    root = node(tmp_path, config="maculaos: [unclosed\n")
    choice = choose(root)
    assert choice.name == made_from(MACHINE_A) and "not valid YAML" in choice.problem


def test_without_a_machine_id_the_first_hardware_nics_mac_is_used(tmp_path: Path) -> None:
    root = node(tmp_path, machine_id="")
    nic(root, "lo", "00:00:00:00:00:00", hardware=False)
    nic(root, "wg0", "", hardware=False)
    nic(root, "enp2s0", "52:54:00:12:34:57")
    nic(root, "enp1s0", "52:54:00:12:34:56")
    choice = choose(root)
    assert choice.name == made_from("52:54:00:12:34:56") and choice.source == "made from the MAC of enp1s0"


def test_with_nothing_to_make_a_name_from_the_host_is_left_as_it_was(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = node(tmp_path, machine_id="uninitialized")
    with pytest.raises(HostnameError, match="no machine id"):
        apply(root, live=False)
    assert main([str(root)]) == 1
    assert "left as it was" in capsys.readouterr().err
    assert (root / "etc/hostname").read_text() == "maculaos\n" and (root / "etc/hosts").read_text() == HOSTS
    assert not (root / hostname.MADE_NAME).exists()


def test_hosts_keeps_one_line_for_the_name_and_everything_else() -> None:
    text = "# comment\n127.0.0.1 localhost\n127.0.1.1 old-name\n10.0.0.5 nas\n"
    once = write_hosts(text, "macula-1")
    assert once == "# comment\n127.0.0.1 localhost\n127.0.1.1\tmacula-1\n10.0.0.5 nas\n"
    assert write_hosts(once, "macula-1") == once
