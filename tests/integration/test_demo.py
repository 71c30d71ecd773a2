"""The README's first command: `maculaos dev up` brings the whole demo up, `dev down` leaves nothing running."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maculaos.devenv.demo import Demo, DemoError
from maculaos.devenv.processes import ProcessRecord, is_running
from tests.integration.conftest import REPO


def maculaos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "maculaos", *args], capture_output=True, text=True, timeout=300)


def test_demo_up_and_down(tmp_path: Path, bin_dir: Path) -> None:
    workdir = tmp_path / "demo"
    up = maculaos("dev", "up", "--workdir", str(workdir))
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        for ref in ("meshrole/warehouse-gateways", "nodeupgrade/to-0-2-0", "backup/nightly",
                    "restore/nuc-02-config-preview", "healthcheck/edge-basics"):
            assert f"{ref} Ready" in up.stdout
        assert "kubectl get maculaos" in up.stdout
        kubeconfig = workdir / "controlplane" / "admin.kubeconfig"
        nodes = subprocess.run([str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", "get", "nodes", "-o", "name"],
                               capture_output=True, text=True, check=True).stdout.split()
        assert len(nodes) == 3
        for node in nodes:
            host_root = workdir / "nodes" / node.split("/")[1]
            assert (host_root / "var/lib/maculaos/config.yaml").exists()
        joining = maculaos("dev", "join-token", "--workdir", str(workdir))
        assert joining.returncode == 0, joining.stderr
        section = yaml.safe_load(joining.stdout)["maculaos"]["kubernetes"]
        port = json.loads((workdir / "state.json").read_text())["api_port"]
        assert section["server"] == f"https://10.0.2.2:{port}" and "BEGIN CERTIFICATE" in section["ca_cert"]
        assert section["ca_cert"] == (workdir / "controlplane" / "pki" / "ca.crt").read_text()
        again = maculaos("dev", "up", "--workdir", str(workdir))
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        state = json.loads((workdir / "state.json").read_text()) if (workdir / "state.json").exists() else None
        down = maculaos("dev", "down", "--workdir", str(workdir))
    assert down.returncode == 0, down.stderr
    assert state is not None
    records = [ProcessRecord(**r) for r in state["processes"]]
    assert {r.name for r in records} == {"kine", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                         "operator", "agent-macula-nuc-01", "agent-macula-nuc-02", "agent-macula-pi-03"}
    assert not any(is_running(r) for r in records)
    assert not workdir.exists()
    stopped = maculaos("dev", "join-token", "--workdir", str(workdir))
    assert stopped.returncode != 0 and "no demo control plane runs" in stopped.stderr


def test_a_malformed_example_fails_loudly_before_anything_starts(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "examples", repo / "examples")
    (repo / "examples" / "broken.yaml").write_text("kind: MeshRole\nspec: [unclosed\n")
    workdir = tmp_path / "demo"
    with pytest.raises(DemoError, match="broken.yaml is not valid YAML"):
        Demo(workdir, repo).up()
    assert not workdir.exists()
