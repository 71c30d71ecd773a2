"""The firmware selection (maculaos.image.firmware) on small trees: kmod's real modinfo reads the
`firmware=` names from kernel module files made here (an ELF object with a .modinfo section, xz-compressed
as Debian ships them: the build machine has no kernel modules of its own), and the selection keeps exactly
what they name, with the version fallback, keep/drop, links and compression handled. The same code on a
real kernel's modules: tests/image/test_firmware.py."""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from maculaos.image import firmware
from maculaos.image.build import BuildInputs, ImageBuilder
from maculaos.image.definition import DefinitionError, load_definition
from maculaos.image.signing import SigningIdentity

REPO = Path(__file__).resolve().parents[2]
DEFINITION = REPO / "image-build" / "maculaos.yaml"
KVER = "6.12.0-test-amd64"


def _module(path: Path, *firmware_names: str, name: str = "drv") -> None:
    """A kernel module file as modinfo sees one: an ELF object whose .modinfo section holds
    NUL-separated key=value strings; written .ko.xz."""
    work = path.parent / f".{path.name}.work"
    work.mkdir(parents=True)
    info = work / "modinfo.bin"
    info.write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in
                              [("license", "GPL"), ("name", name), *(("firmware", f) for f in firmware_names)]))
    subprocess.run(["as", "-o", str(work / "empty.o"), "/dev/null"], check=True)
    subprocess.run(["objcopy", "--add-section", f".modinfo={info}", "--set-section-flags", ".modinfo=alloc",
                    str(work / "empty.o"), str(work / "drv.ko")], check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lzma.compress((work / "drv.ko").read_bytes(), format=lzma.FORMAT_XZ,
                                   check=lzma.CHECK_CRC32))
    shutil.rmtree(work)


def _files(tree: Path, *names: str, size: int = 1000) -> None:
    for name in names:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(b"\x01" * size)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with three modules (an iwlwifi-like one naming the newest API version, a NIC, one naming a
    glob), a built-in module's firmware, and a firmware tree with more than they name."""
    root = tmp_path / "root"
    mods = root / "usr/lib/modules" / KVER
    _module(mods / "kernel/drivers/net/wireless/intel/iwlwifi/iwlwifi.ko.xz",
            "iwlwifi-so-a0-gf-a0-89.ucode", "iwlwifi-cc-a0-77.ucode", "iwlwifi-so-a0-gf-a0.pnvm", name="iwlwifi")
    _module(mods / "kernel/drivers/net/ethernet/realtek/r8169.ko.xz", "rtl_nic/rtl8168h-2.fw", name="r8169")
    _module(mods / "kernel/drivers/net/wireless/ath/ath11k/ath11k_pci.ko.xz", "ath11k/WCN6855/hw2.0/*",
            name="ath11k_pci")
    (mods / "modules.builtin.modinfo").write_bytes(b"i915.license=GPL\0i915.firmware=i915/adlp_dmc.bin\0")
    fw = root / firmware.FIRMWARE_DIR
    _files(fw, "iwlwifi-so-a0-gf-a0-72.ucode", "iwlwifi-so-a0-gf-a0-86.ucode",   # 89 absent: 86 is loaded
           "iwlwifi-so-a0-gf-a0-93.ucode",                                       # newer than the driver knows
           "iwlwifi-cc-a0-77.ucode", "iwlwifi-cc-a0-72.ucode",                    # 77 present: 72 not needed
           "iwlwifi-so-a0-gf-a0.pnvm", "iwlwifi-3945-2.ucode",
           "rtl_nic/rtl8168h-2.fw.zst",                                          # compressed: the loader tries .zst
           "rtl_nic/rtl8125a-3.fw",                                              # no module names it
           "ath11k/WCN6855/hw2.0/amss.bin", "ath11k/WCN6855/hw2.0/m3.bin", "ath11k/QCA6390/hw2.0/amss.bin",
           "i915/adlp_dmc.bin", "i915/dg1_dmc.bin",
           "intel-ucode/06-9a-03", "intel-ucode/06-8f-05", "cxgb4/t6fw-1.27.5.0.bin")
    (fw / "cxgb4/t6fw.bin").symlink_to("t6fw-1.27.5.0.bin")
    # A named file that is a link into an otherwise unnamed folder: the target stays.
    (fw / "i915/adlp_dmc.bin").unlink()
    _files(fw, "i915/blobs/adlp_dmc_ver2_16.bin")
    (fw / "i915/adlp_dmc.bin").symlink_to("blobs/adlp_dmc_ver2_16.bin")
    return root


def test_modinfo_reads_every_firmware_name_of_loadable_and_built_in_modules(root: Path) -> None:
    assert firmware.module_firmware(root) == {
        "iwlwifi-so-a0-gf-a0-89.ucode", "iwlwifi-cc-a0-77.ucode", "iwlwifi-so-a0-gf-a0.pnvm",
        "rtl_nic/rtl8168h-2.fw", "ath11k/WCN6855/hw2.0/*", "i915/adlp_dmc.bin"}


def test_a_module_modinfo_cannot_read_is_an_error_naming_it(root: Path) -> None:
    bad = root / "usr/lib/modules" / KVER / "kernel/broken.ko.xz"
    bad.write_bytes(b"not an xz file")
    with pytest.raises(firmware.FirmwareError, match="modinfo failed"):
        firmware.module_firmware(root)


def test_prune_keeps_what_the_modules_name_and_the_newest_older_api_version(root: Path) -> None:
    selection = firmware.prune(root, keep=["intel-ucode/06-9a-*"], drop=[])
    kept = {p.relative_to(root / firmware.FIRMWARE_DIR).as_posix()
            for p in (root / firmware.FIRMWARE_DIR).rglob("*") if not p.is_dir()}
    assert kept == set(selection.kept) == {
        "iwlwifi-so-a0-gf-a0-86.ucode", "iwlwifi-cc-a0-77.ucode", "iwlwifi-so-a0-gf-a0.pnvm",
        "rtl_nic/rtl8168h-2.fw.zst", "ath11k/WCN6855/hw2.0/amss.bin", "ath11k/WCN6855/hw2.0/m3.bin",
        "i915/adlp_dmc.bin", "i915/blobs/adlp_dmc_ver2_16.bin", "intel-ucode/06-9a-03"}
    assert "cxgb4/t6fw.bin" in selection.removed and "iwlwifi-so-a0-gf-a0-93.ucode" in selection.removed
    assert len(selection.removed) == 10 and selection.removed_bytes == 9 * 1000      # one of them a link
    assert not (root / firmware.FIRMWARE_DIR / "cxgb4").exists()                  # emptied folders go
    assert not (root / firmware.FIRMWARE_DIR / "ath11k/QCA6390").exists()
    assert "removed 10 (0.0 MB)" in selection.describe()


def test_drop_removes_named_files_and_keep_wins_over_drop(root: Path) -> None:
    selection = firmware.prune(root, keep=["cxgb4/t6fw.bin", "i915/dg1_*"],
                               drop=["ath11k/*", "i915/*", "cxgb4/*"])
    assert "ath11k/WCN6855/hw2.0/amss.bin" in selection.removed
    assert "i915/adlp_dmc.bin" in selection.removed
    # Kept by name although dropped by folder; the link keeps its target, which is otherwise unnamed.
    assert {"i915/dg1_dmc.bin", "cxgb4/t6fw.bin", "cxgb4/t6fw-1.27.5.0.bin"} <= set(selection.kept)
    assert os.readlink(root / firmware.FIRMWARE_DIR / "cxgb4/t6fw.bin") == "t6fw-1.27.5.0.bin"


def test_a_dropped_link_target_stays_when_a_kept_link_needs_it(root: Path) -> None:
    selection = firmware.prune(root, keep=[], drop=["i915/blobs/*"])
    assert {"i915/adlp_dmc.bin", "i915/blobs/adlp_dmc_ver2_16.bin"} <= set(selection.kept)


def test_the_build_steps_select_then_move_microcode_to_the_initramfs_only(root: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"select": "modules", "keep": ["intel-ucode/06-9a-*"], "drop": [],
                                  "initramfs_only": ["intel-ucode/*"]}))
    report = tmp_path / "report.json"
    assert firmware.main(["select", str(root), str(policy), str(report)]) == 0
    assert (root / firmware.FIRMWARE_DIR / "intel-ucode/06-9a-03").exists()      # for update-initramfs
    assert firmware.main(["initramfs-only", str(root), str(policy), str(report)]) == 0
    assert not (root / firmware.FIRMWARE_DIR / "intel-ucode").exists()
    selection = firmware.Selection(**json.loads(report.read_text()))
    assert selection.initramfs_only == [1, 1000]
    assert "1 of the kept (0.0 MB) are in the initramfs only" in selection.describe()


def test_select_all_keeps_every_file_without_reading_modules(root: Path, tmp_path: Path) -> None:
    before = sorted(p for p in (root / firmware.FIRMWARE_DIR).rglob("*"))
    (root / "usr/lib/modules" / KVER / "kernel/broken.ko.xz").write_bytes(b"modinfo would fail on this")
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"select": "all", "keep": [], "drop": ["cxgb4/*"], "initramfs_only": []}))
    assert firmware.main(["select", str(root), str(policy), str(tmp_path / "report.json")]) == 0
    assert sorted(p for p in (root / firmware.FIRMWARE_DIR).rglob("*")) == before


def test_a_root_without_firmware_is_left_alone(tmp_path: Path) -> None:
    assert firmware.prune(tmp_path, keep=[], drop=[]).kept == ()


def test_the_shipped_definition_keeps_microcode_only_for_the_initramfs_and_says_so() -> None:
    d = load_definition(DEFINITION)
    assert d.firmware.select == "modules"
    assert d.firmware.initramfs_only == ["intel-ucode/*", "amd-ucode/*"]
    assert "IUCODE_TOOL_SCANCPUS=no" in d.files["/etc/default/intel-microcode"]
    assert "AMD64UCODE_INITRAMFS=early" in d.files["/etc/default/amd64-microcode"]


def test_bluetooth_firmware_is_dropped_until_an_extension_keeps_it(tmp_path: Path) -> None:
    """No Bluetooth stack in the image: its firmware goes, though btintel/btrtl name some of it; an
    extension that adds bluez brings it back with `keep` (keep wins over drop)."""
    files = ["intel/ibt-0040-0041.sfi", "rtl_bt/rtl8852bu_fw.bin", "iwlwifi-so-a0-gf-a0-89.ucode"]
    names = frozenset({"intel/ibt-0040-0041.sfi", "rtl_bt/rtl8852bu_fw.bin", "iwlwifi-so-a0-gf-a0-89.ucode"})
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"blob")
    shipped = load_definition(DEFINITION).firmware
    ext = tmp_path / "bluez.yaml"
    ext.write_text("packages: [bluez]\nfirmware:\n  keep: [intel/ibt-*, rtl_bt/*]\n")
    extended = load_definition(DEFINITION, [ext]).firmware
    assert firmware.select(tmp_path, firmware.Policy(tuple(shipped.keep), tuple(shipped.drop), names)).kept == \
        ("iwlwifi-so-a0-gf-a0-89.ucode",)
    assert firmware.select(tmp_path, firmware.Policy(tuple(extended.keep), tuple(extended.drop), names)).kept == \
        tuple(sorted(files))


def test_an_extension_adds_firmware_to_keep(tmp_path: Path) -> None:
    ext = tmp_path / "custom.yaml"
    ext.write_text("packages: [firmware-amd-graphics]\nfirmware:\n  keep: [amdgpu/*, 'cxgb4/*']\n")
    base = load_definition(DEFINITION)
    d = load_definition(DEFINITION, [ext])
    assert d.firmware.keep == base.firmware.keep + ["amdgpu/*", "cxgb4/*"]
    assert d.firmware.drop == base.firmware.drop


@pytest.mark.parametrize(("text", "message"), [
    ("firmware:\n  keep: [/usr/lib/firmware/x.bin]\n", "firmware.keep.0: Value error, '/usr/lib/firmware/x.bin' "
                                                      "must be a path relative"),
    ("firmware:\n  keep: [../etc/shadow]\n", "firmware.keep.0: Value error, '../etc/shadow' must be"),
    ("firmware:\n  keep: ['a b']\n", "firmware.keep.0: String should match pattern"),
    ("firmware:\n  keep: ['']\n", "firmware.keep.0: String should match pattern"),
    ("firmware:\n  drop: [x]\n", "firmware.drop: Extra inputs are not permitted"),
    ("firmware:\n  keep: x.bin\n", "firmware.keep: Input should be a valid list"),
])
def test_bad_firmware_values_in_an_extension_are_refused_naming_the_field(tmp_path: Path, text: str,
                                                                         message: str) -> None:
    ext = tmp_path / "custom.yaml"
    ext.write_text(text)
    with pytest.raises(DefinitionError, match=f"custom.yaml: {message}"):
        load_definition(DEFINITION, [ext])


@pytest.mark.parametrize(("firmware_section", "message"), [
    ({"select": "some"}, "firmware.select: Input should be 'modules' or 'all'"),
    ({"drop": ["x/../../etc/*"]}, "firmware.drop.0: Value error"),
    ({"initramfs_only": ["/boot/*"]}, "firmware.initramfs_only.0: Value error"),
    ({"keeep": []}, "firmware.keeep: Extra inputs are not permitted"),
])
def test_bad_firmware_values_in_the_definition_are_refused_naming_the_field(
        tmp_path: Path, firmware_section: dict[str, object], message: str) -> None:
    import yaml
    data = yaml.safe_load(DEFINITION.read_text())
    data["overlays"] = [str(REPO / "image-build" / "overlay")]
    data["firmware"] = firmware_section
    path = tmp_path / "maculaos.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DefinitionError, match=message):
        load_definition(path)


def test_mmdebstrap_selects_before_the_overlays_and_trims_after_customize(tmp_path: Path) -> None:
    identity = SigningIdentity(tmp_path / "k", tmp_path / "c", tmp_path / "c", True)
    builder = ImageBuilder(BuildInputs(load_definition(DEFINITION), REPO, identity), tmp_path / "out",
                           tmp_path / "cache")
    cmd = builder.mmdebstrap_command(tmp_path / "root", tmp_path / "payload", tmp_path / "in", tmp_path / "out",
                                     (tmp_path / "policy.json", tmp_path / "report.json"))
    hooks = [a for a in cmd if a.startswith("--customize-hook=")]
    order = [next(i for i, h in enumerate(hooks) if marker in h) for marker in
             ("sync-out", "maculaos.image.firmware select", "sync-in", "customize.sh",
              "maculaos.image.firmware initramfs-only")]
    assert order == sorted(order)
    without = builder.mmdebstrap_command(tmp_path / "root", tmp_path / "payload", tmp_path / "in", tmp_path / "o")
    assert not any("maculaos.image.firmware" in a for a in without)
