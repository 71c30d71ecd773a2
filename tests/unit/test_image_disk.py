"""The disk image's parts without booting: the GPT layout read back by sfdisk, the ESP read back by mtools,
GRUB's environment by grub-editenv, the BIOS boot code where the firmware looks, grub.cfg against its
golden file and GRUB's own syntax check, the signing inputs and a signed bundle checked by real RAUC."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from maculaos.image import grub
from maculaos.image.bundle import build_bundle
from maculaos.image.disk import (
    MIB,
    BootFiles,
    DiskError,
    DiskInputs,
    boot_environment,
    build_disk,
    esp_get,
    esp_put,
    partition_table,
    plan,
    write_at,
)
from maculaos.image.signing import SigningError, development_identity, given_identity, sign_file

GOLDEN = Path(__file__).parent / "golden"
CMDLINE = "boot=macula macula.mode=disk rauc.slot=A console=ttyS0 console=tty0 ro quiet"


def _mtools(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True,
                          env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A disk image of the real layout around stand-in payloads (a text 'squashfs', kernel, initrd)."""
    tmp = tmp_path_factory.mktemp("disk")
    squashfs, kernel, initrd = tmp / "root.squashfs", tmp / "vmlinuz", tmp / "initrd"
    squashfs.write_bytes(b"SQUASHFS STAND-IN" + bytes(3 * MIB) + b"END")
    kernel.write_bytes(b"KERNEL" * 1000)
    initrd.write_bytes(b"INITRD" * 1000)
    tree = tmp / "seed"
    (tree / "var/lib/maculaos").mkdir(parents=True)
    (tree / "var/lib/maculaos/config.yaml").write_text("maculaos: {}\n")
    disk = tmp / "disk.img"
    build_disk(DiskInputs(squashfs, BootFiles(kernel, initrd), "9.9.9", CMDLINE, esp_mib=64, slot_mib=256,
                          data_mib=64, seed="test", epoch=1_700_000_000, data_tree=tree), disk)
    return disk, tmp


def test_gpt_layout_has_the_partitions_the_initramfs_and_rauc_look_for(small_disk: tuple[Path, Path]) -> None:
    disk, _ = small_disk
    table = partition_table(disk)
    assert [p.name for p in table.partitions] == ["bios", "ESP", "rootfs-A", "rootfs-B", "data"]
    assert [(p.start_mib, p.size_mib) for p in table.partitions] == [(1, 1), (2, 64), (66, 256), (322, 256),
                                                                     (578, 64)]
    assert table.part("bios").type_guid == "21686148-6449-6E6F-744E-656564454649"
    assert table.part("ESP").type_guid == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert disk.stat().st_size == 643 * MIB
    with disk.open("rb") as f:
        f.seek(table.part("rootfs-A").offset)
        assert f.read(17) == b"SQUASHFS STAND-IN"       # the squashfs written raw into slot A
        f.seek(table.part("rootfs-B").offset)
        assert f.read(4096) == bytes(4096)              # slot B empty: RAUC installs into it


def test_esp_holds_grub_for_uefi_its_config_and_slot_as_boot_files(small_disk: tuple[Path, Path]) -> None:
    disk, tmp = small_disk
    image = f"{disk}@@{partition_table(disk).part('ESP').offset}"
    listing = _mtools("mdir", "-/", "-b", "-i", image, "::/")
    for name in ("::/EFI/BOOT/BOOTX64.EFI", "::/grub/grub.cfg", "::/grub/grubenv", "::/A/vmlinuz", "::/A/initrd.img",
                 "::/A/version.cfg"):
        assert name in listing.splitlines(), listing
    assert esp_get(disk, "A/version.cfg") == b'set version_A="9.9.9"\n'   # the menu's "MaculaOS 9.9.9 (slot A)"
    assert "::/B/" not in listing
    _mtools("mcopy", "-n", "-i", image, "::/A/vmlinuz", str(tmp / "kernel-back"))
    assert (tmp / "kernel-back").read_bytes() == b"KERNEL" * 1000
    blkid = subprocess.run(["blkid", "-p", "-o", "export", "--offset", str(partition_table(disk).part("ESP").offset),
                            str(disk)], capture_output=True, text=True).stdout
    assert "TYPE=vfat" in blkid and "LABEL=MACULA_ESP" in blkid and "VERSION=FAT32" in blkid


def test_grub_environment_starts_with_slot_a_good_and_b_empty(small_disk: tuple[Path, Path]) -> None:
    disk, _ = small_disk
    assert boot_environment(disk) == {"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0"}


def test_bios_boot_code_points_at_core_img_in_the_bios_grub_partition(small_disk: tuple[Path, Path]) -> None:
    disk, _ = small_disk
    bios = partition_table(disk).part("bios")
    with disk.open("rb") as f:
        mbr = f.read(512)
        f.seek(bios.offset)
        core = f.read(512)
    boot_img = (grub.GRUB_LIB / "i386-pc" / "boot.img").read_bytes()
    assert mbr[:grub.BOOT_KERNEL_SECTOR] == boot_img[:grub.BOOT_KERNEL_SECTOR]
    assert int.from_bytes(mbr[0x5C:0x64], "little") == bios.offset // 512
    assert mbr[0x1FE:0x200] == b"\x55\xaa" and mbr[0x1C2] == 0xEE   # the protective MBR's GPT entry kept
    assert int.from_bytes(core[0x1F4:0x1FC], "little") == bios.offset // 512 + 1


def test_data_partition_is_ext4_labelled_and_seeded(small_disk: tuple[Path, Path]) -> None:
    disk, tmp = small_disk
    data = partition_table(disk).part("data")
    blkid = subprocess.run(["blkid", "-p", "-o", "export", "--offset", str(data.offset), str(disk)],
                           capture_output=True, text=True).stdout
    assert "TYPE=ext4" in blkid and "LABEL=MACULA_DATA" in blkid
    extract = tmp / "data-part.img"
    with disk.open("rb") as f, extract.open("wb") as out:
        f.seek(data.offset)
        out.write(f.read(64 * MIB))
    shown = subprocess.run(["debugfs", "-R", "cat /var/lib/maculaos/config.yaml", str(extract)],
                           capture_output=True, text=True)
    assert shown.stdout == "maculaos: {}\n"


def test_boot_environment_and_esp_files_can_be_changed_offline(small_disk: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    disk, _ = small_disk
    copy = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", str(disk), str(copy)], check=True)
    env = boot_environment(copy, {"ORDER": "B A", "B_OK": "1"})
    assert env["ORDER"] == "B A" and env["B_OK"] == "1" and env["A_OK"] == "1"
    (tmp_path / "k").write_bytes(b"other kernel")
    esp_put(copy, {"B/vmlinuz": tmp_path / "k"})
    image = f"{copy}@@{partition_table(copy).part('ESP').offset}"
    assert "::/B/vmlinuz" in _mtools("mdir", "-/", "-b", "-i", image, "::/").splitlines()
    assert esp_get(copy, "B/vmlinuz") == b"other kernel"


def test_grub_cfg_matches_golden_and_passes_grubs_syntax_check(tmp_path: Path) -> None:
    cfg = grub.grub_config(grub.boot_cmdline(CMDLINE))
    assert cfg == (GOLDEN / "grub.cfg").read_text()
    (tmp_path / "grub.cfg").write_text(cfg)
    check = subprocess.run(["grub-script-check", str(tmp_path / "grub.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "rauc.slot=A" not in cfg and "macula.mode=disk rauc.slot=$boot_slot" in cfg
    assert 'elif [ "$try" = 2 ]; then set try=3' in cfg   # the third try is the last


@pytest.mark.parametrize(("slot", "version"), [("C", "1.0.0"), ("A", '1.0.0"; reboot; "'), ("B", "")])
def test_a_slot_version_line_takes_only_a_slot_and_a_plain_version(slot: str, version: str) -> None:
    """GRUB sources the line: a version that is not plain text would be run as GRUB script."""
    with pytest.raises(grub.GrubError, match="no version line"):
        grub.slot_version_cfg(slot, version)


def test_plan_without_data_size_gives_data_the_rest_of_the_disk() -> None:
    layout = plan(128, 1024, None)
    assert layout.total_mib is None and layout.part("data").size_mib is None
    assert layout.part("data").start_mib == 1 + 1 + 128 + 2 * 1024


def test_a_squashfs_larger_than_its_slot_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (2 * MIB))
    target = tmp_path / "t.img"
    target.write_bytes(b"")
    with pytest.raises(DiskError, match="big is 2 MiB, its partition 1 MiB"):
        write_at(target, 0, big, MIB)


def test_development_ca_signs_and_says_so(tmp_path: Path) -> None:
    identity = development_identity(tmp_path)
    assert identity.development and identity.keyring == identity.cert
    assert identity.describe().startswith("development CA (throwaway")
    assert development_identity(tmp_path).fingerprint() == identity.fingerprint()   # made once, reused
    data = tmp_path / "SHA256SUMS"
    data.write_text("abc  file\n")
    sig = sign_file(identity, data)
    pub = tmp_path / "pub.pem"
    subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(identity.cert), "-out", str(pub)], check=True)
    verify = ["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(data)]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    data.write_text("abd  file\n")
    assert subprocess.run(verify, capture_output=True).returncode != 0


def test_given_signing_inputs_are_checked_before_a_build(tmp_path: Path) -> None:
    one, other = development_identity(tmp_path / "one"), development_identity(tmp_path / "other")
    assert not given_identity(one.key, one.cert).development
    with pytest.raises(SigningError, match="is not the key of --signing-cert"):
        given_identity(other.key, one.cert)
    with pytest.raises(SigningError, match="--signing-key: .* is not a file"):
        given_identity(tmp_path / "missing.pem", one.cert)


def test_bundle_is_verity_signed_and_refused_under_another_ca(tmp_path: Path) -> None:
    ours, theirs = development_identity(tmp_path / "ours"), development_identity(tmp_path / "theirs")
    squashfs, kernel, initrd = tmp_path / "root.squashfs", tmp_path / "kernel", tmp_path / "initrd"
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("ID=maculaos\n")
    subprocess.run(["mksquashfs", str(tree), str(squashfs), "-quiet", "-no-progress"], check=True)
    kernel.write_text("kernel")
    initrd.write_text("initrd")
    bundle = build_bundle(squashfs, kernel, initrd, tmp_path / "b.raucb", "9.9.9", "amd64", "testbuild", ours)
    info = subprocess.run(["rauc", "info", f"--keyring={ours.keyring}", "--output-format=json", str(bundle)],
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert '"compatible":"maculaos-amd64"' in info.stdout and '"version":"9.9.9"' in info.stdout
    assert "verity" in subprocess.run(["rauc", "info", f"--keyring={ours.keyring}", str(bundle)],
                                      capture_output=True, text=True).stdout
    refused = subprocess.run(["rauc", "info", f"--keyring={theirs.keyring}", str(bundle)], capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "signature" in refused.stderr.lower()


@pytest.mark.parametrize(("flags", "message"), [
    (["--signing-key", "k.pem"], "--signing-key and --signing-cert go together"),
    (["--signing-cert", "c.pem"], "--signing-key and --signing-cert go together"),
    (["--signing-key", "missing.pem", "--signing-cert", "missing.pem"], "--signing-key: missing.pem is not a file"),
])
def test_image_build_refuses_bad_signing_flags_before_building(flags: list[str], message: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from maculaos.cli import main
    assert main(["image", "build", "--out", "/nonexistent/out", *flags]) == 1
    assert message in capsys.readouterr().err
