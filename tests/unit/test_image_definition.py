"""The image definition and extensions: the shipped file parses, merges add, bad values name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from maculaos.image.build import BuildError, _pins
from maculaos.image.definition import DefinitionError, load_definition

REPO = Path(__file__).resolve().parents[2]
DEFINITION = REPO / "image-build" / "maculaos.yaml"


def _write(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _definition_with(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load(DEFINITION.read_text())
    data["overlays"] = [str(REPO / "image-build" / "overlay")]
    data.update(changes)
    return _write(tmp_path, "maculaos.yaml", data)


def test_shipped_definition_parses_and_names_outputs_per_seed_8_2() -> None:
    d = load_definition(DEFINITION)
    assert d.artifact("squashfs") == f"macula-os-{d.version}-amd64.squashfs"
    packages = d.debian_packages()
    for needed in ("linux-image-amd64", "systemd", "python3", "nftables", "rauc", "restic", "openssh-server",
                   "restic-rest-server"):
        assert needed in packages
    assert len(packages) == len(set(packages))
    assert d.overlays == [(REPO / "image-build" / "overlay").resolve()]


def test_extension_adds_packages_overlays_files_and_firstboot(tmp_path: Path) -> None:
    (tmp_path / "extra").mkdir()
    ext = _write(tmp_path, "custom.yaml", {"packages": ["htop", "python3-numpy"], "overlays": ["extra"],
                                           "files": {"/etc/myapp/config.yaml": "setting: value\n"},
                                           "firstboot": ["/opt/myapp/setup.sh"]})
    base = load_definition(DEFINITION)
    d = load_definition(DEFINITION, [ext])
    assert d.debian_packages() == base.debian_packages() + ["python3-numpy"]  # htop already there
    assert d.overlays == base.overlays + [(tmp_path / "extra").resolve()]
    assert d.files["/etc/myapp/config.yaml"] == "setting: value\n"
    assert d.firstboot == ["/opt/myapp/setup.sh"]
    assert d.extensions == [ext.resolve()]


def test_profiles_select_package_lists() -> None:
    d = load_definition(DEFINITION).select(["boot"])
    assert "linux-image-amd64" in d.debian_packages() and "rauc" not in d.debian_packages()
    with pytest.raises(DefinitionError, match="--profiles: 'gui' is not one of"):
        load_definition(DEFINITION).select(["boot", "gui"])


@pytest.mark.parametrize(("ext", "message"), [
    ({"packages": ["Bad_Name"]}, "packages.0: String should match pattern"),
    ({"packages": ["ok", "a"]}, "packages.1: String should match pattern"),
    ({"files": {"etc/relative": "x"}}, "files.etc/relative.\\[key\\]: String should match pattern"),
    ({"files": {"/etc/../usr/bin/x": "x"}}, "files: Value error, '/etc/../usr/bin/x' must be an absolute"),
    ({"overlays": ["does-not-exist"]}, "overlays: .*does-not-exist is not a folder"),
    ({"images": ["registry/app:1"]}, "images: Extra inputs are not permitted"),
    ({"firstboot": [""]}, "firstboot.0: String should have at least 1 character"),
    ({"packages": ["raspi-firmware [armhf]"]}, "packages: Value error, 'raspi-firmware \\[armhf\\]': 'armhf' is not"),
])
def test_bad_extension_values_are_refused_naming_the_field(tmp_path: Path, ext: dict[str, object],
                                                           message: str) -> None:
    path = _write(tmp_path, "custom.yaml", ext)
    with pytest.raises(DefinitionError, match=f"custom.yaml: {message}"):
        load_definition(DEFINITION, [path])


def test_extension_may_not_replace_a_file_the_definition_writes(tmp_path: Path) -> None:
    first = _write(tmp_path, "one.yaml", {"files": {"/etc/motd": "one"}})
    second = _write(tmp_path, "two.yaml", {"files": {"/etc/motd": "two"}})
    with pytest.raises(DefinitionError, match="two.yaml: files: /etc/motd is already written"):
        load_definition(DEFINITION, [first, second])


@pytest.mark.parametrize(("changes", "message"), [
    ({"version": "1.0"}, "version: String should match pattern"),
    ({"suite": "bookworm"}, "suite: String should match pattern"),
    ({"arch": "riscv64"}, "arch: Input should be 'amd64' or 'arm64'"),
    ({"arch": "x86_64"}, "arch: Input should be 'amd64' or 'arm64'"),      # the kernel's name, not Debian's
    ({"packages": {"boot": ["grub-pc-bin [arm46]"]}},
     "packages: Value error, boot: 'grub-pc-bin \\[arm46\\]': 'arm46' is not an architecture MaculaOS builds"),
    ({"packages": {"boot": ["grub-pc-bin [amd64"]}}, "packages.boot.0: String should match pattern"),
    ({"packages": {"boot": ["grub-pc-bin []"]}}, "packages.boot.0: String should match pattern"),
    ({"mirrors": []}, "mirrors: List should have at least 1 item"),
    ({"mirrors": ["ftp://example.org/debian"]}, "mirrors.0: String should match pattern"),
    ({"profiles": ["boot", "gui"]}, "'gui' is not a key of packages"),
    ({"user": "Root User"}, "user: String should match pattern"),
    ({"kernel_cmdline": "console=ttyS0"}, "kernel_cmdline: Value error, must contain boot=macula"),
    ({"kernel_cmdline": "boot=macula init=\"/bin/sh\""}, "kernel_cmdline: Value error, word 'init=\"/bin/sh\"'"),
    ({"packages": {"boot": ["UPPER"]}}, "packages.boot.0: String should match pattern"),
    ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ({"disk": {"esp_mib": 16}}, "disk.esp_mib: Input should be greater than or equal to 64"),
    ({"disk": {"slot_mib": 100000}}, "disk.slot_mib: Input should be less than or equal to 16384"),
    ({"disk": {"data_mib": "big"}}, "disk.data_mib: Input should be a valid integer"),
    ({"disk": {"swap_mib": 512}}, "disk.swap_mib: Extra inputs are not permitted"),
])
def test_bad_definition_values_are_refused_naming_the_field(tmp_path: Path, changes: dict[str, object],
                                                            message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        load_definition(_definition_with(tmp_path, **changes))


def test_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(DefinitionError, match="custom.yaml: must be a mapping"):
        load_definition(DEFINITION, [path])


def test_python_pins_come_from_constraints(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("pydantic==2.14.4\nPyYAML==6.0.4\n")
    assert _pins(constraints, ["pydantic", "pyyaml"]) == ["pydantic==2.14.4", "pyyaml==6.0.4"]
    with pytest.raises(BuildError, match="python: kopf has no pin"):
        _pins(constraints, ["kopf"])


def test_amd64_builds_exactly_the_packages_it_did_before_architectures_were_added() -> None:
    """The list a plain build installs: the one before "[arch]" entries existed, and lighttpd (the git server)."""
    expected = ("linux-image-amd64 initramfs-tools busybox e2fsprogs systemd systemd-sysv udev dbus kmod zstd "
                "grub-common dosfstools fdisk cloud-guest-utils mtools grub-pc-bin grub-efi-amd64-bin python3 "
                "nftables iproute2 systemd-resolved ca-certificates openssh-server sudo less rauc rauc-service "
                "restic restic-rest-server wireguard-tools cryptsetup chrony avahi-daemon avahi-utils curl jq "
                "vim nano htop btop tmux rsync git lighttpd fastfetch nats-server firmware-linux-free "
                "firmware-misc-nonfree firmware-realtek firmware-iwlwifi firmware-intel-graphics intel-microcode "
                "amd64-microcode").split()
    assert load_definition(DEFINITION).debian_packages() == expected
    assert load_definition(DEFINITION).for_arch("amd64").debian_packages() == expected


def test_arm64_swaps_the_architecture_specific_packages_and_keeps_the_rest() -> None:
    amd64 = load_definition(DEFINITION)
    arm64 = amd64.for_arch("arm64")
    assert arm64.arch == "arm64" and arm64.artifact("raucb") == f"macula-os-{arm64.version}-arm64.raucb"
    only_amd64 = set(amd64.debian_packages()) - set(arm64.debian_packages())
    only_arm64 = set(arm64.debian_packages()) - set(amd64.debian_packages())
    assert only_amd64 == {"linux-image-amd64", "grub-pc-bin", "grub-efi-amd64-bin", "intel-microcode",
                          "amd64-microcode"}
    assert only_arm64 == {"linux-image-arm64", "grub-efi-arm64-bin"}


def test_an_extension_may_restrict_a_package_to_one_architecture(tmp_path: Path) -> None:
    ext = _write(tmp_path, "custom.yaml", {"packages": ["raspi-firmware [arm64]", "python3-numpy"]})
    assert "raspi-firmware" in load_definition(DEFINITION, [ext]).for_arch("arm64").debian_packages()
    amd64 = load_definition(DEFINITION, [ext]).debian_packages()
    assert "raspi-firmware" not in amd64 and "python3-numpy" in amd64


@pytest.mark.parametrize("arch", ["riscv64", "x86_64", "", "ARM64"])
def test_an_unknown_arch_option_is_refused(arch: str) -> None:
    with pytest.raises(DefinitionError, match=f"--arch: '{arch}' is not one of amd64, arm64"):
        load_definition(DEFINITION).for_arch(arch)
