"""The recovery boot's own step on a real ext4 partition image (mkfs.ext4 -d, mounted by the real mount
through a loop device): config.yaml's keys read without writing to the partition, and each reason there
are none said."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from maculaos.host import recovery_boot
from maculaos.host.logins import check_ssh_key

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl person@shop"


def _partition(tmp_path: Path, config: object | None) -> Path:
    tree, image = tmp_path / "tree", tmp_path / "data.img"
    (tree / "var/lib/maculaos").mkdir(parents=True)
    if config is not None:
        (tree / "var/lib/maculaos/config.yaml").write_text(yaml.safe_dump(config))
    with image.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "MACULA_DATA", "-d", str(tree), str(image)], check=True)
    return image


def test_the_configured_keys_are_read_and_the_partition_is_left_as_it_was(tmp_path: Path) -> None:
    image = _partition(tmp_path, {"ssh_authorized_keys": [KEY], "maculaos": {"mesh": {"realm": "io.shop"}}})
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    access = recovery_boot.read_access(str(image))
    assert access == recovery_boot.Access(str(image), [check_ssh_key(KEY)], None)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before      # read-only, journal not replayed
    assert str(image) not in Path("/proc/self/mountinfo").read_text()    # unmounted again
    keys = tmp_path / "run/authorized_keys"
    recovery_boot.write_keys(access, keys)
    assert keys.read_text() == f"{check_ssh_key(KEY)}\n" and keys.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("config, says", [
    (None, "config.yaml names no ssh_authorized_keys"),
    ({"ssh_authorized_keys": []}, "config.yaml names no ssh_authorized_keys"),
    ({"ssh_authorized_keys": ["ssh-ed25519 not-base64!"]}, "ssh_authorized_keys[0]"),
    ({"ssh_authorized_keys": "ssh-ed25519 AAAA"}, "ssh_authorized_keys must be a list"),
])
def test_no_keys_is_said_with_the_reason(tmp_path: Path, config: object | None, says: str) -> None:
    access = recovery_boot.read_access(str(_partition(tmp_path, config)))
    assert access.keys == [] and access.problem is not None and says in access.problem, access


def test_a_partition_that_does_not_mount_is_said(tmp_path: Path) -> None:
    image = tmp_path / "damaged.img"
    image.write_bytes(bytes(4 * 1024 * 1024))
    access = recovery_boot.read_access(str(image))
    assert access.keys == [] and access.problem and "does not mount" in access.problem
    assert "maculaos recovery check" in access.problem
    assert recovery_boot.read_access(None).problem == "no data partition labelled MACULA_DATA"
