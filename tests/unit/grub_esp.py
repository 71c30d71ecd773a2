"""A sandbox node's ESP for the one-shot GRUB flags (factory reset, recovery boot): the build's grub.cfg
and a new disk's GRUB environment, read with the real grub-editenv, and the two boot loaders a flag
cannot be set on. Shared by test_factory_reset and test_recovery_mode (`esp` is a plugin fixture: tests/conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from maculaos.host.grubenv import GRUB_CFG, GRUBENV
from maculaos.image import grub

CMDLINE = "console=ttyS0 ro quiet"


def grubenv(root: Path) -> dict[str, str]:
    out = subprocess.run(["grub-editenv", str(root / GRUBENV), "list"], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.fixture
def esp(tmp_path: Path) -> Path:
    """A host root whose ESP holds the build's grub.cfg and a new disk's GRUB environment."""
    (tmp_path / GRUB_CFG).parent.mkdir(parents=True)
    (tmp_path / GRUB_CFG).write_text(grub.grub_config(CMDLINE))
    grub.initial_environment(tmp_path / GRUBENV, ["A"])
    return tmp_path


@contextmanager
def unsuitable(root: Path, damage: str) -> Iterator[None]:
    """The node without its ESP's environment ("no-esp"), or with a grub.cfg older than the flags
    ("old-grub-cfg"), for the block; the environment is put back after it, to compare."""
    if damage == "no-esp":
        (root / GRUBENV).rename(root / "grubenv.saved")
    else:
        (root / GRUB_CFG).write_text("set default=normal\n")
    yield
    if damage == "no-esp":
        (root / "grubenv.saved").rename(root / GRUBENV)
