"""`maculaos upgrade` on a node without Kubernetes (seed 4.8), against real RAUC on a simulated node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from maculaos.devenv.rauc import SimulatedRaucNode
from tests.host.rauc_fixtures import Bundles


def maculaos(node: SimulatedRaucNode, *args: str) -> subprocess.CompletedProcess[str]:
    reboot = f"touch {node.dir / 'reboot-requested'}"
    return subprocess.run([sys.executable, "-m", "maculaos", "upgrade", *args, f"--host-root={node.host_root}",
                           f"--reboot-command={reboot}", f"--rauc={node.rauc_command}"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": node.layout.bus_address})


def usb_with(node: SimulatedRaucNode, *bundle_files: Path) -> Path:
    usb = node.host_root / "media/usb"
    usb.mkdir(parents=True, exist_ok=True)
    for bundle in bundle_files:
        (usb / bundle.name).write_bytes(bundle.read_bytes())
    return usb


def test_check_apply_commit_and_rollback(rauc_node: SimulatedRaucNode, bundles: Bundles) -> None:
    usb = usb_with(rauc_node, bundles.good, bundles.newer)
    check = maculaos(rauc_node, "--check", f"--from={usb}")
    assert check.returncode == 0, check.stderr
    assert "running:   0.1.0 in slot A" in check.stdout
    assert "available: 0.3.0" in check.stdout and "signature and compatible verified" in check.stdout

    apply = maculaos(rauc_node, "--apply", f"--from={usb}")
    assert apply.returncode == 0, apply.stderr
    assert apply.stdout.startswith("Rebooting:") and (rauc_node.dir / "reboot-requested").exists()
    assert rauc_node.reboot() == "B"
    commit = maculaos(rauc_node, "--commit")
    assert commit.returncode == 0 and commit.stdout.startswith("Succeeded: running 0.3.0 in slot B"), commit.stdout
    assert rauc_node.slot_state("B") == "good"

    rollback = maculaos(rauc_node, "--rollback")
    assert rollback.returncode == 0 and rollback.stdout.startswith("Rebooting: rolling back to slot A")
    assert rauc_node.reboot() == "A"
    check = maculaos(rauc_node, "--check")
    assert "running:   0.1.0 in slot A" in check.stdout
    assert "RolledBack" in check.stdout and "maculaos upgrade --rollback" in check.stdout


def test_apply_refuses_a_bundle_from_another_ca(rauc_node: SimulatedRaucNode, bundles: Bundles) -> None:
    usb = usb_with(rauc_node, bundles.impostor)
    check = maculaos(rauc_node, "--check", f"--from={usb}")
    assert check.returncode == 1 and "signature verification failed" in check.stderr
    apply = maculaos(rauc_node, "--apply", f"--from={usb}", "--version=0.2.0")
    assert apply.returncode == 1
    assert apply.stdout.startswith("Failed: not installed, slot A untouched") and "signature" in apply.stdout
    assert not (rauc_node.dir / "reboot-requested").exists()
    assert rauc_node.slot_state("B") == "bad"


def test_apply_without_a_source_says_what_to_give(rauc_node: SimulatedRaucNode) -> None:
    result = maculaos(rauc_node, "--apply")
    assert result.returncode == 1 and "give --from DIR, or --url with --version" in result.stderr
    result = maculaos(rauc_node, "--apply", "--url=http://127.0.0.1:9/x.raucb")
    assert result.returncode == 1 and "give --from DIR, or --url with --version" in result.stderr
    result = maculaos(rauc_node, "--apply", f"--from={rauc_node.dir / 'no-such-usb'}")
    assert result.returncode == 1 and "no-such-usb does not exist on this node" in result.stderr
    empty = rauc_node.host_root / "media/empty-usb"
    empty.mkdir(parents=True)
    result = maculaos(rauc_node, "--apply", f"--from={empty}")
    assert result.returncode == 1 and "no readable bundle" in result.stderr
    assert rauc_node.slot_state("B") == "bad"
