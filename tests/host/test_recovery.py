"""`maculaos recovery` on a real ext4 image file, as the recovery boot runs it on the data partition: real
e2fsck and debugfs, real loop mounts, and a restic repository written by the agent's real backup engine."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from maculaos.cli import main
from maculaos.devenv.controlplane import default_bin_dir
from maculaos.host.recovery import fsck_words, mount_points
from tests.host.test_backup_engine import NODE, Clock, backup_obj, engine

RESTIC = str(default_bin_dir() / "restic")
CONFIG = f"maculaos:\n  hostname: {NODE}\nk3s:\n  airgap: true\n"
HASH = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."


def data_image(tmp_path: Path, files: dict[str, str]) -> Path:
    """An ext4 image labelled like the data partition, holding files (paths relative to its root)."""
    tree = tmp_path / "tree"
    for name, text in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    image = tmp_path / "data.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "MACULA_DATA", "-d", str(tree), str(image), "16M"], check=True)
    return image


def read(image: Path, path: str) -> str | None:
    """A file's text on the unmounted image (debugfs), None when it is not there."""
    result = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True, check=True)
    return None if "File not found" in result.stderr else result.stdout


def names(image: Path, directory: str) -> list[str]:
    result = subprocess.run(["debugfs", "-R", f"ls -p {directory}", str(image)], capture_output=True, text=True,
                            check=True)
    found = (line.split("/")[5] for line in result.stdout.splitlines() if line.startswith("/"))
    return sorted(n for n in found if n not in (".", ".."))


def digest(image: Path) -> str:
    return hashlib.sha256(image.read_bytes()).hexdigest()


def recovery(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `maculaos recovery ...`; its exit code and everything it printed (e2fsck's output included)."""
    code = main(["recovery", *argv])
    out, err = capfd.readouterr()
    return code, out + err


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return data_image(tmp_path, {"var/lib/maculaos/config.yaml": CONFIG, "var/lib/maculaos/state.txt": "now",
                                 "var/lib/data/keep.txt": "user data"})


def test_check_finds_damage_without_changing_anything_and_repair_fixes_it(
        image: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, out = recovery(capfd, "check", "--device", str(image))
    assert code == 0 and "Pass 5" in out and f"data partition {image}: clean (e2fsck exit 0)" in out, out

    subprocess.run(["debugfs", "-w", "-R", "set_inode_field /var/lib/maculaos/state.txt links_count 5", str(image)],
                   check=True, capture_output=True)
    before = digest(image)
    code, out = recovery(capfd, "check", "--device", str(image))
    assert code == 1 and "ref count is 5, should be 1" in out and "errors found, nothing changed" in out, out
    assert digest(image) == before

    code, out = recovery(capfd, "check", "--repair", "--device", str(image))
    assert code == 0 and "errors repaired" in out, out
    code, out = recovery(capfd, "check", "--device", str(image))
    assert code == 0 and "clean (e2fsck exit 0)" in out, out
    assert read(image, "/var/lib/maculaos/state.txt") == "now"


def test_check_and_password_refuse_a_mounted_partition(image: Path, tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", str(image), str(elsewhere)], check=True)
    try:
        assert mount_points(image) == [str(elsewhere)]
        code, out = recovery(capfd, "check", "--repair", "--device", str(image))
        assert code == 2 and f"is mounted at {elsewhere}" in out and "Pass 1" not in out, out
        code, out = recovery(capfd, "password", "--hash", HASH, "--device", str(image), "--mount-dir",
                             str(tmp_path / "m"))
        assert code == 2 and f"is mounted at {elsewhere}" in out, out
        code, out = recovery(capfd, "status", "--device", str(image), "--rauc", "false")
        assert code == 0 and f"mounted: at {elsewhere}" in out and "file system: ext4, clean" in out, out
    finally:
        subprocess.run(["umount", str(elsewhere)], check=True)


def test_password_lands_in_config_yaml_and_a_bad_hash_changes_nothing(
        image: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    mount_dir = tmp_path / "run/recovery/data"
    code, out = recovery(capfd, "password", "--hash", HASH, "--device", str(image), "--mount-dir", str(mount_dir))
    assert code == 0 and "next normal boot" in out, out
    assert read(image, "/var/lib/maculaos/config.yaml") == CONFIG + f"password_hash: {HASH}\n"
    assert mount_points(image) == [] and not os.path.ismount(mount_dir)

    before = digest(image)
    for bad, shown in (("hunter2", "not shown"), ("$6$short", "'$6$short'")):
        code, out = recovery(capfd, "password", "--hash", bad, "--device", str(image), "--mount-dir", str(mount_dir))
        assert code == 2 and shown in out and "nothing written" in out, out
        assert "hunter2" not in out
    assert digest(image) == before

    # without --hash: asked twice, hashed as SHA-512 crypt (the same hash openssl makes with its salt)
    answers = iter(["s3cret pw", "s3cret pw", "one", "another"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    code, out = recovery(capfd, "password", "--device", str(image), "--mount-dir", str(mount_dir))
    assert code == 0, out
    config = read(image, "/var/lib/maculaos/config.yaml")
    assert config is not None and config.startswith(CONFIG)
    made = config.splitlines()[-1].removeprefix("password_hash: ")
    salt = made.split("$")[2]
    again = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "s3cret pw"], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert made.startswith("$6$") and made == again
    before = digest(image)
    code, out = recovery(capfd, "password", "--device", str(image), "--mount-dir", str(mount_dir))
    assert code == 2 and "differ" in out and digest(image) == before


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A repository the agent's backup engine wrote from a sandbox host root (its /var/lib/maculaos, the
    paths recorded under that host root), and the snapshot's id. Shared: a test that damages it copies it."""
    host = tmp_path_factory.mktemp("backup") / "host"
    (host / "var/lib/maculaos").mkdir(parents=True)
    (host / "var/lib/maculaos/config.yaml").write_text(CONFIG)
    (host / "var/lib/maculaos/state.txt").write_text("backed up")
    (host / "var/lib/maculaos/gone.txt").write_text("deleted since")
    reports: list[tuple[str, str, dict[str, Any]]] = []
    eng = engine(host, Clock(), reports, RESTIC)
    eng.tick({"nightly": backup_obj({"id": "r1", "reason": "OnDemand", "nodes": [NODE]},
                                    include=["/var/lib/maculaos"])}, {}, {})
    entry = reports[-1][2]
    assert entry["phase"] == "Succeeded", entry
    return host / "var/backups/r", entry["lastSnapshotId"]


def test_restore_brings_var_lib_maculaos_back_and_keeps_the_old_folder(
        image: Path, tmp_path: Path, repository: tuple[Path, str], capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    repo, snapshot_id = repository
    monkeypatch.setenv("RESTIC_PASSWORD", "pw")
    mount_dir = tmp_path / "m"
    code, out = recovery(capfd, "restore", "--repo", str(repo), "--device", str(image), "--mount-dir",
                         str(mount_dir), "--restic", RESTIC)
    assert code == 0 and f"from snapshot {snapshot_id[:8]} of {NODE}" in out, out
    assert read(image, "/var/lib/maculaos/state.txt") == "backed up"
    assert read(image, "/var/lib/maculaos/gone.txt") == "deleted since"
    aside = next(n for n in names(image, "/var/lib") if n.startswith("maculaos.before-restore-"))
    assert f"kept aside as /var/lib/{aside}" in out
    assert read(image, f"/var/lib/{aside}/state.txt") == "now"
    assert read(image, "/var/lib/data/keep.txt") == "user data"
    assert mount_points(image) == [] and not os.path.ismount(mount_dir)

    code, out = recovery(capfd, "restore", "--repo", str(repo), "--snapshot", snapshot_id[:8], "--device",
                         str(image), "--mount-dir", str(mount_dir), "--restic", RESTIC)
    assert code == 0, out
    assert len([n for n in names(image, "/var/lib") if n.startswith("maculaos.before-restore-")]) == 2


def test_a_failed_restore_leaves_the_folder_in_place(image: Path, tmp_path: Path, repository: tuple[Path, str],
                                                     capfd: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository[0], repo)
    monkeypatch.delenv("RESTIC_PASSWORD", raising=False)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-pw\n")
    common = ["--device", str(image), "--mount-dir", str(tmp_path / "m"), "--restic", RESTIC]
    code, out = recovery(capfd, "restore", "--repo", str(repo), "--password-file", str(wrong), *common)
    assert code == 1 and "wrong repository password" in out and "nothing restored" in out, out
    code, out = recovery(capfd, "restore", "--repo", str(tmp_path / "nowhere"), "--password-file", str(wrong),
                         *common)
    assert code == 1 and f"no restic repository at {tmp_path / 'nowhere'}" in out, out
    assert names(image, "/var/lib") == ["data", "maculaos"]
    assert read(image, "/var/lib/maculaos/state.txt") == "now"

    # restic itself fails after the folder was moved aside (the repository lost its data): moved back
    for pack in (repo / "data").rglob("*"):
        if pack.is_file():
            pack.chmod(0o600)
            pack.unlink()
    good = tmp_path / "good"
    good.write_text("pw\n")
    code, out = recovery(capfd, "restore", "--repo", str(repo), "--password-file", str(good), *common)
    assert code == 1 and "/var/lib/maculaos is back as it was" in out, out
    assert names(image, "/var/lib") == ["data", "maculaos"]
    assert read(image, "/var/lib/maculaos/state.txt") == "now"
    assert mount_points(image) == []


def test_bad_values_are_refused_by_name(image: Path, tmp_path: Path, repository: tuple[Path, str],
                                        capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _ = repository
    monkeypatch.setenv("RESTIC_PASSWORD", "pw")
    mount = ["--mount-dir", str(tmp_path / "m"), "--restic", RESTIC]
    restore = ["restore", "--repo", str(repo), "--device", str(image), *mount]
    for argv, said in (
            ([*restore, "--snapshot", "garbage!"], "--snapshot 'garbage!': neither latest nor a snapshot id"),
            ([*restore, "--snapshot", "deadbeef"], "snapshot deadbeef does not exist"),
            ([*restore, "--host", "Not_A_Name"], "--host 'Not_A_Name' is not used"),
            ([*restore, "--host", "other-node"], "no snapshot of node other-node"),
            (["restore", "--repo", " ", "--device", str(image), *mount], "--repo is empty"),
            ([*restore, "--password-file", str(tmp_path / "absent")], f"--password-file {tmp_path / 'absent'}"),
            (["restore", "--repo", str(repo), "--device", str(tmp_path / "absent"), *mount],
             f"--device {tmp_path / 'absent'}: No such file or directory"),
            (["check", "--device", str(tmp_path)], f"--device {tmp_path}: neither a block device nor an ext4"),
            (["password", "--hash", HASH, "--device", str(tmp_path / "absent")], "--device"),
            (["status", "--device", str(tmp_path / "absent"), "--rauc", "false"], "--device")):
        code, out = recovery(capfd, *argv)
        assert code in (1, 2) and said in out, (argv, out)
    monkeypatch.delenv("RESTIC_PASSWORD")
    code, out = recovery(capfd, *restore)
    assert code == 2 and "no repository password: set RESTIC_PASSWORD or give --password-file" in out, out
    assert names(image, "/var/lib") == ["data", "maculaos"] and mount_points(image) == []
    assert read(image, "/var/lib/maculaos/state.txt") == "now"

    code, out = recovery(capfd, "status", "--device", str(image), "--rauc", "false")
    assert code == 0 and "label MACULA_DATA, 16.0 MiB" in out and "mounted: no" in out, out
    assert "slots: unknown" in out and "maculaos recovery restore --repo REPO" in out

    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(1 << 20))
    code, out = recovery(capfd, "check", "--device", str(blank))
    assert code == 1 and "e2fsck could not check it (operational error) (e2fsck exit 8)" in out, out
    code, out = recovery(capfd, "status", "--device", str(blank), "--rauc", "false")
    assert code == 0 and "label none, 1.0 MiB" in out and "not readable as ext4" in out, out


@pytest.mark.parametrize(("code", "repair", "words", "clean"), [
    (0, False, "clean", True), (1, True, "errors repaired", True), (2, True, "errors repaired", True),
    (4, False, "errors found, nothing changed", False), (4, True, "errors left after the repair", False),
    (12, True, "errors left after the repair; e2fsck could not check it", False), (32, True, "cancelled", False)])
def test_e2fsck_exit_bits_in_words(code: int, repair: bool, words: str, clean: bool) -> None:
    result = fsck_words(code, repair)
    assert result.words.startswith(words) and result.clean is clean
