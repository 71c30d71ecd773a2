"""A build for another architecture than the machine's (arm64 on amd64), without building: the emulator
check refuses a machine that cannot run the new root's programs with a sentence saying what to install,
wheels are chosen for the image's platform from a folder shared by all architectures, RAUC's compatible
follows the architecture, and an operator archive of the wrong architecture is refused before any download."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from maculaos.image import airgap, emulation
from maculaos.image.build import WHEEL_PLATFORMS_BY_ARCH, BuildError, BuildInputs, ImageBuilder, choose_wheels
from maculaos.image.bundle import compatible
from maculaos.image.definition import load_definition
from maculaos.image.signing import SigningIdentity
from maculaos.image.vm import AAVMF_CODE, VmSpec, qemu_command, uefi_vars_copy

REPO = Path(__file__).resolve().parents[2]
DEFINITION = REPO / "image-build" / "maculaos.yaml"
SYSTEM_CONF = REPO / "image-build" / "overlay" / "etc" / "rauc" / "system.conf"
# What Debian's qemu-user-static registers (binfmt-support), as /proc/sys/fs/binfmt_misc shows it.
HANDLER = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n"
           "magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n")


def _binfmt(tmp_path: Path, handler: str | None, mounted: bool = True) -> Path:
    folder = tmp_path / "binfmt_misc"
    folder.mkdir()
    if mounted:
        (folder / "status").write_text("enabled\n")
    if handler is not None:
        (folder / "qemu-aarch64").write_text(handler)
    return folder


def test_the_machines_own_architecture_needs_no_emulator(tmp_path: Path) -> None:
    assert emulation.check("amd64", _binfmt(tmp_path, None, mounted=False), host="amd64") == "native"


def test_a_registered_handler_with_the_fix_binary_flag_is_accepted(tmp_path: Path) -> None:
    assert emulation.check("arm64", _binfmt(tmp_path, HANDLER), host="amd64") == \
        "emulated: /usr/libexec/qemu-binfmt/aarch64-binfmt-P"


@pytest.mark.parametrize(("handler", "mounted", "message"), [
    (None, False, "binfmt_misc is not mounted at .*: mount -t binfmt_misc binfmt_misc"),
    (None, True, "needs qemu-user-static: no qemu-aarch64 handler is registered .* apt-get install "
                 "qemu-user-static binfmt-support"),
    (HANDLER.replace("enabled", "disabled", 1), True, "is disabled: update-binfmts --enable qemu-aarch64"),
    (HANDLER.replace("flags: PF", "flags: P"), True, "lacks the F \\(fix binary\\) flag"),
])
def test_a_machine_that_cannot_run_arm64_programs_is_told_what_to_install(
        tmp_path: Path, handler: str | None, mounted: bool, message: str) -> None:
    with pytest.raises(emulation.EmulationError, match=message):
        emulation.check("arm64", _binfmt(tmp_path, handler, mounted), host="amd64")


def test_wheels_are_chosen_for_the_images_platform_from_a_shared_folder(tmp_path: Path) -> None:
    names = ["pydantic_core-2.41.5-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
             "pydantic_core-2.41.5-cp313-cp313-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
             "pydantic_core-2.41.5-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
             "pyyaml-6.0.3-cp313-cp313-manylinux_2_28_aarch64.whl",
             "pydantic-2.12.5-py3-none-any.whl"]
    for name in names:
        (tmp_path / name).touch()
    pins = ["pydantic_core==2.41.5", "PyYAML==6.0.3", "pydantic==2.12.5"]
    arm = [p.name for p in choose_wheels(tmp_path, pins, WHEEL_PLATFORMS_BY_ARCH["arm64"])]
    assert arm == [names[1], names[3], names[4]]
    with pytest.raises(BuildError, match="no wheel for PyYAML==6.0.3, Python 3.13 and manylinux_2_17_x86_64"):
        choose_wheels(tmp_path, pins, WHEEL_PLATFORMS_BY_ARCH["amd64"])


def _builder(arch: str, tmp_path: Path, operator_image: Path | None = None) -> ImageBuilder:
    definition = load_definition(DEFINITION).for_arch(arch)
    identity = SigningIdentity(tmp_path / "k", tmp_path / "c", tmp_path / "c", True)
    return ImageBuilder(BuildInputs(definition, REPO, identity, operator_image=operator_image), tmp_path / "out",
                        tmp_path / "cache")


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_raucs_compatible_in_the_image_is_the_one_its_bundles_carry(tmp_path: Path, arch: str) -> None:
    conf = tmp_path / "system.conf"
    conf.write_text(SYSTEM_CONF.read_text())
    _builder(arch, tmp_path)._rauc_compatible(conf)
    lines = conf.read_text().splitlines()
    assert [line for line in lines if line.startswith("compatible=")] == [f"compatible={compatible(arch)}"]
    # Nothing else changes; amd64's is the overlay's file as it is.
    assert [line for line in lines if not line.startswith("compatible=")] == \
        [line for line in SYSTEM_CONF.read_text().splitlines() if not line.startswith("compatible=")]
    assert (conf.read_text() == SYSTEM_CONF.read_text()) == (arch == "amd64")


def _oci_archive(path: Path, architecture: str | None) -> Path:
    config = {"os": "linux", "config": {}} | ({"architecture": architecture} if architecture else {})
    files = {"manifest.json": json.dumps([{"Config": "blobs/sha256/cfg", "RepoTags": ["op:1"], "Layers": []}]),
             "blobs/sha256/cfg": json.dumps(config)}
    with tarfile.open(path, "w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return path


def test_an_operator_archive_of_another_architecture_is_refused(tmp_path: Path) -> None:
    amd64_archive = _oci_archive(tmp_path / "op-amd64.tar", "amd64")
    _builder("amd64", tmp_path).check_operator_archive(amd64_archive)
    with pytest.raises(BuildError, match="op-amd64.tar is built for amd64, this image for arm64"):
        _builder("arm64", tmp_path).check_operator_archive(amd64_archive)
    with pytest.raises(BuildError, match="names no architecture"):
        _builder("arm64", tmp_path).check_operator_archive(_oci_archive(tmp_path / "none.tar", None))
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(BuildError, match="not an image archive"):
        _builder("arm64", tmp_path).check_operator_archive(tmp_path / "junk.tar")


def test_the_operator_archive_cache_is_kept_per_architecture() -> None:
    assert airgap.operator_inputs_digest(REPO, 1_700_000_000, "amd64") != \
        airgap.operator_inputs_digest(REPO, 1_700_000_000, "arm64")


def test_arm64_vms_are_qemus_virt_board_with_aavmf(tmp_path: Path) -> None:
    spec = VmSpec(tmp_path / "k", tmp_path / "i", tmp_path / "r", None, "boot=macula console=ttyAMA0",
                  arch="arm64", uefi_vars=tmp_path / "vars.fd")
    cmd = qemu_command(spec)
    assert cmd[0] == "qemu-system-aarch64"
    assert cmd[cmd.index("-machine") + 1] == "virt" and cmd[cmd.index("-cpu") + 1] == "cortex-a57"
    assert f"if=pflash,format=raw,readonly=on,file={AAVMF_CODE}" in cmd and "OVMF" not in " ".join(cmd)
    assert qemu_command(VmSpec(tmp_path / "k", tmp_path / "i", None, None, "boot=macula"))[0] == \
        "qemu-system-x86_64"
    if AAVMF_CODE.exists():             # qemu-efi-aarch64 (tools/install.sh): its empty variable store
        assert uefi_vars_copy(tmp_path / "v.fd", "arm64").stat().st_size == AAVMF_CODE.stat().st_size
