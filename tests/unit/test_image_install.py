"""`maculaos install` and the ISO without booting: the medium read back from a real ISO (xorriso), the
refusals on recorded /sys and /proc views (a mounted partition, the boot medium, swap, a holder, a
partition, too small a disk), the unattended settings, and a whole install onto a disk image file through
the same write_system the raw image uses, read back by sfdisk, mtools and debugfs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from maculaos.image import grub
from maculaos.image.disk import MIB, BootFiles, boot_environment, partition_table
from maculaos.image.install import (
    InstallError,
    Medium,
    SystemView,
    Target,
    auto_settings,
    candidate_disks,
    check_config,
    choose_target,
    inspect_target,
    install,
    plan_install,
    read_medium,
    refusals,
)
from maculaos.image.iso import IsoInputs, build_iso, efi_image_mib, volume_label

CMDLINE = "boot=macula macula.mode=disk rauc.slot=A console=ttyS0 console=tty0 ro quiet"
GOLDEN = Path(__file__).parent / "golden"


def _payload(tmp: Path) -> tuple[Path, Path, Path]:
    squashfs, kernel, initrd = tmp / "root.squashfs", tmp / "vmlinuz", tmp / "initrd"
    squashfs.write_bytes(b"SQUASHFS STAND-IN" + bytes(MIB) + b"END")
    kernel.write_bytes(b"KERNEL" * 1000)
    initrd.write_bytes(b"INITRD" * 1000)
    return squashfs, kernel, initrd


def _iso_inputs(tmp: Path, **custom: object) -> IsoInputs:
    squashfs, kernel, initrd = _payload(tmp)
    fields: dict[str, object] = {"esp_mib": 64, "slot_mib": 64, "data_mib": 32, "epoch": 1_700_000_000} | custom
    return IsoInputs(squashfs, BootFiles(kernel, initrd), "9.9.9", "amd64", CMDLINE, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Medium:
    """A medium as the live system sees it: the files of a real ISO, extracted where the initramfs
    mounts it."""
    tmp = tmp_path_factory.mktemp("iso")
    iso = build_iso(_iso_inputs(tmp), tmp / "m.iso")
    root = tmp / "medium"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(root)],
                   capture_output=True, check=True)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return read_medium(root)


def test_iso_is_reproducible_with_bios_and_uefi_boot_images_for_cd_and_usb(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = build_iso(_iso_inputs(tmp_path / "a"), tmp_path / "one.iso")
    two = build_iso(_iso_inputs(tmp_path / "b"), tmp_path / "two.iso")
    assert one.read_bytes() == two.read_bytes()                   # same inputs and epoch, same ISO
    shown = subprocess.run(["xorriso", "-indev", str(one), "-report_el_torito", "plain"], capture_output=True,
                           text=True)
    report = shown.stdout + shown.stderr
    assert "El Torito boot img :   1  BIOS" in report and "El Torito boot img :   2  UEFI" in report
    assert "grub2-mbr" in report and "GPT" in report               # USB stick: hybrid MBR and GPT
    table = json.loads(subprocess.run(["sfdisk", "--json", str(one)], capture_output=True, text=True).stdout)
    assert any(p["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" for p in table["partitiontable"]["partitions"])
    blkid = subprocess.run(["blkid", "-o", "export", str(one)], capture_output=True, text=True).stdout
    assert "TYPE=iso9660" in blkid and "LABEL=MACULAOS_9_9_9_AMD64" in blkid


def test_the_isos_efi_image_is_sized_to_its_grub(medium: Medium, tmp_path: Path) -> None:
    """Every MiB of efi.img is a MiB of the ISO: the FAT image holds BOOTX64.EFI with one MiB spare."""
    image = medium.root / "boot/grub/efi.img"
    env = os.environ | {"MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mcopy", "-i", str(image), "::EFI/BOOT/BOOTX64.EFI", str(tmp_path / "x.efi")], env=env,
                   check=True, capture_output=True)
    efi = (tmp_path / "x.efi").stat().st_size
    assert efi > 100_000                                          # a real GRUB, read back from the FAT
    assert image.stat().st_size == efi_image_mib(efi) * 2**20 <= efi + 2 * 2**20
    assert [efi_image_mib(n) for n in (1, 2**20, 2**20 + 1)] == [2, 2, 3]


def test_iso_menu_matches_golden_and_passes_grubs_syntax_check(tmp_path: Path) -> None:
    cfg = grub.iso_config("9.9.9", grub.boot_cmdline(CMDLINE), "LABEL=MACULAOS_9_9_9_AMD64")
    assert cfg == (GOLDEN / "iso-grub.cfg").read_text()
    (tmp_path / "grub.cfg").write_text(cfg)
    check = subprocess.run(["grub-script-check", str(tmp_path / "grub.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert cfg.index("--id live") < cfg.index("--id install") < cfg.index("--id recovery")
    assert "set default=live" in cfg and "macula.mode=install" in cfg and "rauc.slot" not in cfg


def test_volume_label_is_iso9660_safe() -> None:
    assert volume_label("1.2.3-rc.1", "arm64") == "MACULAOS_1_2_3_RC_1_ARM64"
    assert len(volume_label("1.2.3-" + "x" * 40, "amd64")) == 32


def test_medium_describes_the_layout_it_installs(medium: Medium) -> None:
    assert (medium.version, medium.esp_mib, medium.slot_mib, medium.min_data_mib) == ("9.9.9", 64, 64, 32)
    assert medium.cmdline == "console=ttyS0 console=tty0 ro quiet"
    assert medium.squashfs.read_bytes().startswith(b"SQUASHFS STAND-IN")
    assert medium.needed_mib == 1 + 1 + 64 + 64 + 64 + 32 + 1


def test_a_folder_that_is_no_medium_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="not booted from a MaculaOS ISO"):
        read_medium(tmp_path)


def _sysfs(tmp: Path) -> SystemView:
    """A recorded view: disk vda (254:0) with partitions vda1 (254:1) and vda2 (254:2), disk vdb (254:16)."""
    sys = tmp / "sys"
    for disk, number, parts in (("vda", "254:0", {"vda1": "254:1", "vda2": "254:2"}), ("vdb", "254:16", {}),
                                ("loop0", "7:0", {}), ("sr0", "11:0", {})):
        node = sys / "devices" / disk
        (node / "holders").mkdir(parents=True)
        (node / "dev").write_text(number + "\n")
        (node / "size").write_text(str(8 * 1024 * 2048) + "\n")        # 8 GiB in sectors
        for part, pnum in parts.items():
            (node / part / "holders").mkdir(parents=True)
            (node / part / "dev").write_text(pnum + "\n")
            (node / part / "partition").write_text("1\n")
            (sys / "dev" / "block").mkdir(parents=True, exist_ok=True)
            (sys / "dev" / "block" / pnum).symlink_to(node / part)
        (sys / "dev" / "block").mkdir(parents=True, exist_ok=True)
        (sys / "dev" / "block" / number).symlink_to(node)
        (sys / "block").mkdir(exist_ok=True)
        (sys / "block" / disk).symlink_to(node)
    (tmp / "mountinfo").write_text("22 1 0:21 / / ro - squashfs /dev/loop0 ro\n")
    (tmp / "swaps").write_text("Filename Type Size Used Priority\n")
    return SystemView(sys, tmp / "mountinfo", tmp / "swaps", tmp / "medium")


def _target(view: SystemView, disk: str, size_gib: int = 8) -> Target:
    node = (view.sys / "block" / disk).resolve()
    numbers = {(node / "dev").read_text().strip()} | {(p.parent / "dev").read_text().strip()
                                                      for p in node.glob("*/partition")}
    return Target(Path(f"/dev/{disk}"), size_gib * 1024 * MIB, True, frozenset(numbers))


def test_an_unused_large_enough_disk_is_accepted_and_data_takes_the_rest(medium: Medium, tmp_path: Path) -> None:
    view = _sysfs(tmp_path)
    target = _target(view, "vdb")
    assert refusals(target, medium, view) == []
    layout = plan_install(target, medium)
    data = layout.part("data")
    assert data.start_mib == 1 + 1 + 64 + 64 + 64
    assert data.size_mib == 8 * 1024 - data.start_mib - 1         # all but the backup GPT's last MiB


def test_a_disk_with_a_mounted_partition_is_refused(medium: Medium, tmp_path: Path) -> None:
    view = _sysfs(tmp_path)
    view.mountinfo.write_text(view.mountinfo.read_text() + "30 22 254:2 / /var rw - ext4 /dev/vda2 rw\n")
    assert refusals(_target(view, "vda"), medium, view) == ["/dev/vda is in use: mounted at /var"]


def test_the_medium_we_booted_from_is_refused_by_name(medium: Medium, tmp_path: Path) -> None:
    view = _sysfs(tmp_path)
    view.mountinfo.write_text(view.mountinfo.read_text() + f"31 22 254:0 / {view.medium} ro - iso9660 /dev/vda ro\n")
    assert refusals(_target(view, "vda"), medium, view) == ["/dev/vda is the medium this system booted from"]


def test_a_disk_held_by_device_mapper_is_refused(medium: Medium, tmp_path: Path) -> None:
    view = _sysfs(tmp_path)
    (view.sys / "devices/vda/vda1/holders/dm-0").mkdir()
    assert refusals(_target(view, "vda"), medium, view) == [
        "/dev/vda is in use by dm-0 (device-mapper, LVM or RAID)"]


def test_a_too_small_disk_is_refused_with_the_size_needed(medium: Medium, tmp_path: Path) -> None:
    view = _sysfs(tmp_path)
    small = Target(Path("/dev/vdb"), 150 * MIB, True, frozenset({"254:16"}))
    assert refusals(small, medium, view) == [
        "/dev/vdb holds 150 MiB; MaculaOS 9.9.9 needs at least 227 MiB (ESP 64, two system slots of 64, "
        "data 32 MiB or more)"]


def test_a_partition_or_a_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="No such file or directory: give a whole disk"):
        inspect_target(tmp_path / "nope")
    with pytest.raises(InstallError, match="neither a disk nor a disk image file"):
        inspect_target(Path("/dev/null"))
    # A real partition of this machine, if it has one (its /sys entry has a `partition` file).
    parts = sorted(Path("/sys/class/block").glob("*/partition"))
    if parts:
        name = parts[0].parent.name
        with pytest.raises(InstallError, match=f"/dev/{name} is a partition: give the whole disk"):
            inspect_target(Path(f"/dev/{name}"))


def test_unattended_install_picks_the_only_free_disk_or_asks_which(medium: Medium, tmp_path: Path) -> None:
    view = _sysfs(tmp_path)
    assert candidate_disks(view) == [Path("/dev/vda"), Path("/dev/vdb")]   # loop0, sr0 are never targets
    view.mountinfo.write_text(view.mountinfo.read_text() + f"31 22 254:0 / {view.medium} ro - iso9660 /dev/vda ro\n")
    # choose_target stats /dev/<name>: this machine's own devices are not the recorded ones, so the
    # choice is checked through refusals on the recorded numbers.
    free = [d for d in ("vda", "vdb") if not refusals(_target(view, d), medium, view)]
    assert free == ["vdb"]
    with pytest.raises(InstallError):
        choose_target(medium, SystemView(tmp_path / "empty-sys", view.mountinfo, view.swaps, view.medium))


def test_unattended_settings_come_from_the_kernel_command_line(tmp_path: Path) -> None:
    (tmp_path / "maculaos").mkdir()
    (tmp_path / "maculaos/install.yaml").write_text("maculaos: {}\n")
    auto = auto_settings("boot=macula macula.mode=install macula.install.config=/maculaos/install.yaml "
                         "macula.install.target=/dev/sda quiet", tmp_path)
    assert auto.config == tmp_path / "maculaos/install.yaml" and auto.target == Path("/dev/sda")
    elsewhere = auto_settings("macula.install.config=/var/lib/x.yaml", tmp_path)
    assert elsewhere.config == Path("/var/lib/x.yaml") and elsewhere.target is None
    assert auto_settings("boot=macula quiet", tmp_path).config is None


@pytest.mark.parametrize(("text", "message"), [
    ("maculaos: [", "is not valid YAML"),
    ("- a\n- b\n", "must hold a mapping at the top"),
    ("maculaos:\n  mesh:\n    roles:\n      bootstrap: maybe\n",
     "the agent would refuse it: maculaos.mesh.roles.bootstrap"),
    ("password_hash: at the shop\n", "login settings are refused: .*password_hash must be a crypt"),
    ("ssh_authorized_keys: [nope]\n", r"login settings are refused: .*ssh_authorized_keys\[0\]"),
    ("maculaos:\n  backup_server:\n    sources: [10.0.3.7/24]\n",
     r"the agent would refuse it: maculaos.backup_server.sources: entry 0 \('10.0.3.7/24'\)"),
])
def test_a_config_the_agent_would_refuse_is_refused_before_anything_is_written(
        tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    with pytest.raises(InstallError, match=message):
        check_config(config)


def test_install_onto_a_disk_image_writes_the_raw_images_layout_and_the_config(medium: Medium,
                                                                                tmp_path: Path) -> None:
    target_file = tmp_path / "disk.img"
    with target_file.open("wb") as f:
        f.write(b"OLD SYSTEM" * 100_000)                         # whatever was there before
        f.truncate(400 * MIB)
    config = tmp_path / "config.yaml"
    config.write_text("maculaos:\n  mesh:\n    realm: io.macula.install\n")
    target = inspect_target(target_file)
    install(target, medium, check_config(config))
    table = partition_table(target_file)
    assert [p.name for p in table.partitions] == ["bios", "ESP", "rootfs-A", "rootfs-B", "data"]
    data = table.part("data")
    assert data.start_mib == 194 and data.size_mib == 400 - 194 - 1
    with target_file.open("rb") as f:
        f.seek(table.part("rootfs-A").offset)
        assert f.read(17) == b"SQUASHFS STAND-IN"
        f.seek(table.part("rootfs-B").offset)
        assert f.read(MIB) == bytes(MIB)                          # the old system is gone from slot B
    assert boot_environment(target_file) == {"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0",
                                             "B_TRY": "0"}
    extract = tmp_path / "data.img"
    with target_file.open("rb") as f, extract.open("wb") as out:
        f.seek(data.offset)
        out.write(f.read((data.size_mib or 0) * MIB))
    shown = subprocess.run(["debugfs", "-R", "cat /var/lib/maculaos/config.yaml", str(extract)],
                           capture_output=True, text=True)
    assert shown.stdout == config.read_text()
    stat = subprocess.run(["debugfs", "-R", "stat /var/lib/maculaos/config.yaml", str(extract)],
                          capture_output=True, text=True).stdout
    assert "Mode:  0600" in stat
    esp = f"{target_file}@@{table.part('ESP').offset}"
    cfg = subprocess.run(["mtype", "-i", esp, "::/grub/grub.cfg"], capture_output=True, text=True,
                         env=os.environ | {"MTOOLS_SKIP_CHECK": "1"}).stdout
    assert "macula.mode=disk rauc.slot=$boot_slot" in cfg and "console=ttyS0 console=tty0 ro quiet" in cfg


def test_two_installs_never_share_disk_ids(medium: Medium, tmp_path: Path) -> None:
    ids = []
    for name in ("one.img", "two.img"):
        path = tmp_path / name
        with path.open("wb") as f:
            f.truncate(240 * MIB)
        install(inspect_target(path), medium, None)
        ids.append(json.loads(subprocess.run(["sfdisk", "--json", str(path)], capture_output=True,
                                             text=True).stdout)["partitiontable"]["id"])
    assert ids[0] != ids[1]


def test_install_refuses_before_writing_a_byte(medium: Medium, tmp_path: Path) -> None:
    small = tmp_path / "small.img"
    small.write_bytes(b"KEEP" * 1024)
    with pytest.raises(InstallError, match="needs at least 227 MiB"):
        install(inspect_target(small), medium, None)
    assert small.read_bytes() == b"KEEP" * 1024


def test_cli_asks_before_erasing_and_writes_nothing_without_yes(medium: Medium, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from maculaos.cli import main
    target = tmp_path / "disk.img"
    target.write_bytes(b"KEEP" * 1024)
    with target.open("r+b") as f:
        f.truncate(300 * MIB)
    before = target.read_bytes()
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    assert main(["install", "--source", str(medium.root), str(target)]) == 1
    out = capsys.readouterr()
    assert "EVERYTHING ON" in out.out and "not confirmed, nothing written" in out.err
    assert target.read_bytes() == before
    assert main(["install", "--source", str(medium.root), "--yes", str(target)]) == 0
    assert "MACULAOS-INSTALLED" in capsys.readouterr().out
    assert [p.name for p in partition_table(target).partitions][-1] == "data"


def test_cli_without_a_target_names_the_disks_and_writes_nothing(medium: Medium,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from maculaos.cli import main
    assert main(["install", "--source", str(medium.root)]) == 2
    assert "which disk? `maculaos install /dev/X`" in capsys.readouterr().err


def test_cli_refuses_a_bad_config_before_touching_the_disk(medium: Medium, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from maculaos.cli import main
    target = tmp_path / "disk.img"
    target.write_bytes(b"KEEP")
    (tmp_path / "bad.yaml").write_text("maculaos: [")
    assert main(["install", "--source", str(medium.root), "--yes", "--config", str(tmp_path / "bad.yaml"),
                 str(target)]) == 1
    assert "is not valid YAML" in capsys.readouterr().err and target.read_bytes() == b"KEEP"
