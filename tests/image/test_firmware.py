"""The firmware selection's module side on the image's real kernel: kmod's modinfo on Debian's own `.ko.xz`
files (from the kernel .deb the image build cached) gives the names the selection keeps for the hardware
issue #6 names: Realtek and Intel NICs, Intel wifi (a versioned name, the newest API the driver knows) and
bluetooth, Intel GPU firmware. The selection logic itself: tests/unit/test_image_firmware.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from maculaos.image import firmware
from maculaos.image.build import default_cache
from tests.image.conftest import BuiltImage

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

DRIVERS = ["*/r8169.ko.xz", "*/iwlwifi.ko.xz", "*/btintel.ko.xz", "*/btrtl.ko.xz", "*/i915.ko.xz", "*/xe.ko.xz",
           "*/e1000e.ko.xz", "*/igc.ko.xz"]


def test_modinfo_on_the_image_kernels_modules_names_the_nuc_firmware(built_image: BuiltImage,
                                                                     tmp_path: Path) -> None:
    debs = sorted((default_cache() / "debs").glob("linux-image-[0-9]*-amd64_*_amd64.deb"))
    assert debs, "the image build caches its kernel .deb"
    root = tmp_path / "root"
    root.mkdir()
    tar = subprocess.run(f"dpkg-deb --fsys-tarfile {debs[-1]} | tar -x -C {root} --wildcards "
                         + " ".join(f"'{d}'" for d in DRIVERS), shell=True, check=False, capture_output=True)
    assert tar.returncode == 0, tar.stderr
    assert len(list(root.rglob("*.ko.xz"))) == len(DRIVERS)
    names = firmware.module_firmware(root)
    assert "rtl_nic/rtl8168h-2.fw" in names and "rtl_bt/rtl8761b_fw.bin" in names
    assert "intel/ibt-12-16.sfi" in names and "i915/adlp_dmc.bin" in names
    assert any(n.startswith("xe/") for n in names)
    # iwlwifi names the newest API version of each chip's file; the selection's fallback reads that form.
    iwlwifi = [n for n in names if n.startswith("iwlwifi-") and n.endswith(".ucode")]
    assert len(iwlwifi) > 20 and all(firmware.VERSIONED.match(n) for n in iwlwifi)
    assert any(n.startswith("iwlwifi-so-a0-gf-a0-") for n in iwlwifi)
