"""Host-layer tests: real nft, real systemctl, on sandbox host roots and throw-away network namespaces."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gitserver import start_server  # noqa: F401  (the git server fixture)
from tests.restserver import RestServer, start_rest_server

UNIT = """[Unit]
Description={description}

[Service]
ExecStart=/usr/bin/{name}

[Install]
WantedBy=multi-user.target
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.host)


@pytest.fixture
def host_root(tmp_path: Path) -> Path:
    """A sandbox host root with the role services the image installs (issue #6 ships the real ones)."""
    root = tmp_path / "host"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in ("macula-mesh", "macula-bootstrap", "macula-gateway"):
        (units / f"{name}.service").write_text(UNIT.format(name=name, description=name))
    (root / "var/lib/maculaos").mkdir(parents=True)
    (root / "var/lib/maculaos/config.yaml").write_text(
        "maculaos:\n  hostname: macula-nuc-01\n  labels:\n    macula.io/role: edge\nk3s:\n  airgap: true\n")
    return root


@pytest.fixture
def netns_nft(tmp_path: Path) -> Iterator[str]:
    """An nft command that acts inside a network namespace of its own, so rules really load and the
    machine's own firewall is never touched."""
    name = f"maculaos-test-{os.getpid()}-{tmp_path.name[-12:]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    wrapper = tmp_path / "nft"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {name} nft "$@"\n')
    wrapper.chmod(0o755)
    try:
        yield str(wrapper)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def rest_server(tmp_path: Path) -> Iterator[RestServer]:
    """A real rest-server on loopback, stopped after the test."""
    server = start_rest_server(tmp_path / "rest-data", tmp_path / "logs")
    try:
        yield server
    finally:
        server.stop()
