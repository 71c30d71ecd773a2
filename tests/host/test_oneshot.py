"""`maculaos agent apply --once`: a node converges from its own config.yaml, without Kubernetes, through
the same code as the agent; a bad config changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from maculaos.host.config import config_file, read_config
from maculaos.host.systemd import Systemd

# Runs the CLI in a fresh interpreter and fails if the boot path pulled in the Kubernetes stack.
LEAN = ("import sys; from maculaos.cli import main; code = main(sys.argv[1:]); "
        "heavy = [m for m in ('kubernetes', 'kopf') if m in sys.modules]; "
        "sys.exit(f'boot path imported {heavy}') if heavy else sys.exit(code)")


def apply_once(host_root: Path, nft: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", LEAN, "agent", "apply", "--once", f"--host-root={host_root}",
                           f"--nft={nft}"], capture_output=True, text=True, timeout=60)


def write_mesh(host_root: Path, mesh: dict[str, object], security: dict[str, object] | None = None) -> None:
    config = read_config(host_root)
    config["maculaos"]["mesh"] = mesh
    if security:
        config["maculaos"]["security"] = security
    config_file(host_root).write_text(yaml.safe_dump(config))


def test_gateway_from_config(host_root: Path, netns_nft: str) -> None:
    write_mesh(host_root, {"roles": {"bootstrap": False, "gateway": True}, "realm": "io.macula"},
               {"firewall": {"allow_ssh": False}})
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 0, result.stderr
    assert "mesh roles peer,gateway" in result.stdout
    assert Systemd(host_root).is_enabled("macula-gateway.service")
    table = subprocess.run([netns_nft, "list", "table", "inet", "maculaos"], capture_output=True, text=True).stdout
    assert "gateway" in table and "ssh" not in table
    assert read_config(host_root)["maculaos"]["hostname"] == "macula-nuc-01"
    again = apply_once(host_root, netns_nft)
    assert "config unchanged, units changed: none, firewall unchanged" in again.stdout


def test_a_bad_config_changes_nothing(host_root: Path, netns_nft: str) -> None:
    write_mesh(host_root, {"roles": {"gateway": "maybe"}})
    before = config_file(host_root).read_text()
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 1 and "maculaos.mesh.roles.gateway must be true or false" in result.stderr
    assert config_file(host_root).read_text() == before
    write_mesh(host_root, {"realm": "Not A Realm"})
    result = apply_once(host_root, netns_nft)
    assert result.returncode == 1 and "realm" in result.stderr and "nothing changed" in result.stderr
    assert subprocess.run([netns_nft, "list", "tables"], capture_output=True, text=True).stdout == ""
