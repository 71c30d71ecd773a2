"""The image's os-release names MaculaOS and its version; a derived build changes exactly the version."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from maculaos.host.nodeupgrade import read_os_version
from maculaos.image.osrelease import BUILD_INFO, OS_RELEASE, os_release, set_version


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / OS_RELEASE).parent.mkdir(parents=True)
    (root / OS_RELEASE).write_text(os_release("0.1.0", "trixie"))
    (root / "etc").mkdir()
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / BUILD_INFO).parent.mkdir(parents=True)
    (root / BUILD_INFO).write_text("MACULAOS_VERSION=0.1.0\nMACULAOS_ARCH=amd64\nBUILD_TOOL='maculaos 0.1.0'\n")
    return root


def test_the_agent_reads_the_maculaos_version_and_a_derived_build_changes_only_it(tmp_path: Path) -> None:
    root = _root(tmp_path)
    assert read_os_version(root) == "0.1.0"
    before = dict(shlex.split(line)[0].split("=", 1) for line in (root / OS_RELEASE).read_text().splitlines())
    assert before["PRETTY_NAME"] == "MaculaOS 0.1.0 (Debian trixie)" and before["ID_LIKE"] == "debian"
    set_version(root, "0.2.0")
    after = dict(shlex.split(line)[0].split("=", 1) for line in (root / OS_RELEASE).read_text().splitlines())
    assert read_os_version(root) == "0.2.0"
    assert after == before | {"VERSION_ID": "0.2.0", "VERSION": "0.2.0",
                              "PRETTY_NAME": "MaculaOS 0.2.0 (Debian trixie)"}
    info = (root / BUILD_INFO).read_text()
    assert info == "MACULAOS_VERSION=0.2.0\nMACULAOS_ARCH=amd64\nBUILD_TOOL='maculaos 0.1.0'\n"


def test_a_root_without_the_version_lines_is_refused(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / BUILD_INFO).write_text("MACULAOS_ARCH=amd64\n")
    with pytest.raises(ValueError, match="MACULAOS_VERSION"):
        set_version(root, "0.2.0")
