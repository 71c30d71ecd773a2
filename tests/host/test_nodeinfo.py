"""`maculaos node-info --write`: what the login screen, the motd and mDNS show of a node, and the login
user's SSH keys, all from config.yaml; a bad config.yaml writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from maculaos.host.config import HostConfigError, config_file
from maculaos.host.logins import authorized_keys, password_field
from maculaos.host.nodeinfo import AVAHI_SERVICE, SUMMARY, read_node_info

SHADOW = "root:*:20000:0:99999:7:::\nmacula:!:20000:0:99999:7:::\nnobody:*:20000:0:99999:7:::\n"
BUILD_INFO = "MACULAOS_VERSION=0.2.0\nMACULAOS_ARCH=amd64\nK3S='not included (no binary)'\nLOGIN_USER=macula\n"


@pytest.fixture
def node(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    (root / "etc/maculaos").mkdir(parents=True)
    (root / "etc/maculaos/build-info").write_text(BUILD_INFO)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                     f"macula:x:{os.getuid()}:{os.getgid()}::/home/macula:/bin/bash\n")
    (root / "etc/shadow").write_text(SHADOW)
    (root / "etc/shadow").chmod(0o640)
    (root / "home/macula").mkdir(parents=True)
    (root / "var/lib/maculaos").mkdir(parents=True)
    return root


def _hash(password: str) -> str:
    return subprocess.run(["openssl", "passwd", "-6", password], capture_output=True, text=True,
                          check=True).stdout.strip()


def _key(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def _write_config(root: Path, config: dict[str, object]) -> None:
    config_file(root).write_text(yaml.safe_dump(config))


def node_info(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "maculaos", "node-info", f"--host-root={root}", *args],
                          capture_output=True, text=True, timeout=60)


def test_roles_realm_and_version_reach_the_login_summary_and_mdns(node: Path, tmp_path: Path) -> None:
    key = _key(tmp_path, "alice")
    _write_config(node, {"maculaos": {"mesh": {"roles": {"bootstrap": False, "gateway": True},
                                               "realm": "io.macula.shop"}},
                         "ssh_authorized_keys": [key]})
    result = node_info(node, "--write")
    assert result.returncode == 0, result.stderr
    summary = (node / SUMMARY).read_text()
    assert "MACULAOS_ROLES=peer,gateway\n" in summary and "MACULAOS_REALM=io.macula.shop\n" in summary
    assert "MACULAOS_VERSION=0.2.0\n" in summary and "MACULAOS_K3S='not included'\n" in summary
    assert (node / SUMMARY).stat().st_mode & 0o777 == 0o644         # read by the login user
    assert result.stdout == summary                                  # what a person sees at the console
    # The summary is what the login screen sources: a shell reads the values back unchanged.
    shell = subprocess.run(["sh", "-c", f". {node / SUMMARY}; echo \"$MACULAOS_K3S|$MACULAOS_ROLES\""],
                           capture_output=True, text=True)
    assert shell.stdout == "not included|peer,gateway\n"
    service = ET.parse(node / AVAHI_SERVICE).getroot()
    assert service.findtext("service/type") == "_macula._tcp" and service.findtext("service/port") == "6443"
    txt = [t.text for t in service.findall("service/txt-record")]
    assert txt == ["version=0.2.0", "roles=peer,gateway", "realm=io.macula.shop", "k3s=no"]
    (node / "var/lib/maculaos/hostname").write_text("macula-1a2b3c4d\n")  # made by the first boot's naming
    assert node_info(node, "--write").returncode == 0
    txt = [t.text for t in ET.parse(node / AVAHI_SERVICE).getroot().findall("service/txt-record")]
    assert txt[-1] == "node-id=macula-1a2b3c4d"  # what `maculaos discover` tells nodes apart by
    keys = (node / "home/macula/.ssh/authorized_keys")
    assert keys.read_text().splitlines()[1:] == [key]
    assert keys.stat().st_mode & 0o777 == 0o600 and keys.parent.stat().st_mode & 0o777 == 0o700


def test_a_node_without_config_is_a_peer_with_no_realm_and_no_keys(node: Path) -> None:
    result = node_info(node, "--write")
    assert result.returncode == 0, result.stderr
    info = read_node_info(node)
    assert info.roles == ("peer",) and info.realm == ""
    assert "MACULAOS_REALM='not configured'" in (node / SUMMARY).read_text()
    assert (node / "home/macula/.ssh/authorized_keys").read_text().count("\n") == 1  # the header only


def test_removing_a_key_from_config_revokes_it(node: Path, tmp_path: Path) -> None:
    alice, bob = _key(tmp_path, "alice"), _key(tmp_path, "bob")
    _write_config(node, {"ssh_authorized_keys": [alice, bob]})
    assert node_info(node, "--write").returncode == 0
    _write_config(node, {"ssh_authorized_keys": [bob]})
    assert node_info(node, "--write").returncode == 0
    assert (node / "home/macula/.ssh/authorized_keys").read_text().splitlines()[1:] == [bob]


@pytest.mark.parametrize(("value", "message"), [
    ("not a list", "ssh_authorized_keys must be a list"),
    ([42], "ssh_authorized_keys[0]: must be one line"),
    (["ssh-ed25519 AAAA\nssh-rsa AAAA"], "ssh_authorized_keys[0]: must be one line"),
    (["ssh-dss AAAAB3NzaC1kc3M= old"], "ssh_authorized_keys[0]: not an OpenSSH public key"),
    (["ssh-ed25519"], "ssh_authorized_keys[0]: not an OpenSSH public key"),
    (["ssh-ed25519 not!base64"], "ssh_authorized_keys[0]: the key is not base64"),
    (["ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ=="], "ssh_authorized_keys[0]: the key's data is not a ssh-ed25519"),
])
def test_bad_keys_are_refused_naming_the_entry(value: object, message: str) -> None:
    with pytest.raises(HostConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        authorized_keys({"ssh_authorized_keys": value}, Path("config.yaml"))


def test_a_password_hash_lets_the_login_user_in_at_the_console_and_removing_it_locks_again(node: Path) -> None:
    secret = _hash("at the shop")
    _write_config(node, {"password_hash": secret})
    result = node_info(node, "--write")
    assert result.returncode == 0, result.stderr
    root, macula, nobody = (node / "etc/shadow").read_text().splitlines()
    assert macula.split(":")[:2] == ["macula", secret] and macula.split(":")[3:] == ["0", "99999", "7", "", "", ""]
    assert int(macula.split(":")[2]) > 20000                        # changed today
    assert (root, nobody) == tuple(SHADOW.splitlines()[0::2])      # other accounts untouched
    assert (node / "etc/shadow").stat().st_mode & 0o777 == 0o640   # not made readable
    assert node_info(node, "--write").returncode == 0
    assert (node / "etc/shadow").read_text().splitlines()[1].split(":")[1] == secret
    _write_config(node, {})
    assert node_info(node, "--write").returncode == 0
    assert (node / "etc/shadow").read_text().splitlines()[1].split(":")[1] == "!"


@pytest.mark.parametrize("value", [
    "at the shop",                                    # a password itself
    "$1$salt$0123456789abcdefghijkl",                 # MD5-crypt: too weak to offer
    "$6$salt$hash:with:colons",                       # would break /etc/shadow
    "$6$salt$hash\nroot::0:0:99999:7:::",             # a line of its own
    "$6$",
    42,
])
def test_bad_password_hashes_are_refused_without_echoing_them(value: object) -> None:
    with pytest.raises(HostConfigError, match="password_hash must be a crypt") as raised:
        password_field({"password_hash": value}, Path("config.yaml"))
    assert not isinstance(value, str) or len(value) < 4 or value not in str(raised.value)


def test_a_bad_config_writes_nothing(node: Path, tmp_path: Path) -> None:
    _write_config(node, {"ssh_authorized_keys": [_key(tmp_path, "alice")], "password_hash": "plaintext"})
    result = node_info(node, "--write")
    assert result.returncode == 1 and "password_hash" in result.stderr and "plaintext" not in result.stderr
    assert not (node / "home/macula/.ssh/authorized_keys").exists()
    assert (node / "etc/shadow").read_text() == SHADOW
    _write_config(node, {"maculaos": {"mesh": {"realm": "io.macula"}}, "ssh_authorized_keys": ["ssh-rsa nope!"]})
    result = node_info(node, "--write")
    assert result.returncode == 1 and "ssh_authorized_keys[0]" in result.stderr
    assert not (node / SUMMARY).exists() and not (node / AVAHI_SERVICE).exists()
    assert not (node / "home/macula/.ssh/authorized_keys").exists()
    config_file(node).write_text("maculaos: [unclosed")
    result = node_info(node, "--write")
    assert result.returncode == 1 and "not valid YAML" in result.stderr
    assert not (node / SUMMARY).exists()


def test_realm_with_markup_is_escaped_in_the_avahi_file(node: Path) -> None:
    _write_config(node, {"maculaos": {"mesh": {"realm": "io.<b>&"}}})
    assert node_info(node, "--write").returncode == 0
    txt = [t.text for t in ET.parse(node / AVAHI_SERVICE).getroot().findall("service/txt-record")]
    assert "realm=io.<b>&" in txt


def test_the_boot_entry_point_writes_the_same_without_the_cli(node: Path, tmp_path: Path) -> None:
    """What macula-node-info.service runs: `python3 -m maculaos.host.nodeinfo`, which must not import
    the CLI's heavy dependencies (pydantic), minutes under emulation on a loaded machine."""
    _write_config(node, {"maculaos": {"mesh": {"roles": {"bootstrap": True}, "realm": "io.macula.boot"}}})
    code = ("import sys, runpy; sys.argv = ['nodeinfo', sys.argv[1]]\n"
            "try:\n    runpy.run_module('maculaos.host.nodeinfo', run_name='__main__')\n"
            "except SystemExit as exit:\n"
            "    heavy = [m for m in ('pydantic', 'kubernetes', 'maculaos.cli') if m in sys.modules]\n"
            "    sys.exit(f'imported {heavy}' if heavy else exit.code)\n")
    result = subprocess.run([sys.executable, "-c", code, str(node)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "MACULAOS_REALM=io.macula.boot" in (node / SUMMARY).read_text()
    config_file(node).write_text("ssh_authorized_keys: [42]\n")
    result = subprocess.run([sys.executable, "-m", "maculaos.host.nodeinfo", str(node)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "nothing written" in result.stderr and "ssh_authorized_keys[0]" in result.stderr
