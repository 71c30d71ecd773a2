"""The README's first command: `maculaos dev up` brings the whole demo up, `dev down` leaves nothing running."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from maculaos.api.common import VERSION_LABEL
from maculaos.devenv.demo import Demo, DemoError
from maculaos.devenv.processes import ProcessRecord, is_running
from tests.integration.conftest import REPO


def maculaos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "maculaos", *args], capture_output=True, text=True, timeout=300)


def get(bin_dir: Path, kubeconfig: Path, ref: str) -> dict[str, Any]:
    out = subprocess.run([str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", "get", ref, "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


def capped_history(bin_dir: Path, kubeconfig: Path, timeout: float = 90) -> dict[str, list[str]]:
    """Each node's history of the check that fails on purpose, once every node has stopped restarting."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = get(bin_dir, kubeconfig, "healthcheck/demo-capped-restart").get("status", {}).get("nodes") or {}
        history = {n: e["checks"]["absent-service"]["history"] for n, e in nodes.items()}
        if len(history) == 3 and all(h and "alerting only" in h[-1] for h in history.values()):
            return history
        assert time.monotonic() < deadline, history
        time.sleep(1)


def wait_upgrade(bin_dir: Path, kubeconfig: Path, name: str, timeout: float = 120) -> dict[str, Any]:
    """A NodeUpgrade's status once its rollout has ended."""
    deadline = time.monotonic() + timeout
    while (status := get(bin_dir, kubeconfig, f"nodeupgrade/{name}").get("status") or {}).get("phase") not in (
            "Succeeded", "Failed"):
        assert time.monotonic() < deadline, status
        time.sleep(1)
    return status


def test_demo_up_and_down(tmp_path: Path, bin_dir: Path) -> None:
    workdir = tmp_path / "demo"
    started = time.monotonic()
    up = maculaos("dev", "up", "--workdir", str(workdir), "--upgrade-check-wait", "2s", "--upgrade-delay", "0s",
                  "--resync-seconds", "2")
    print(f"dev up: {time.monotonic() - started:.1f}s")
    agents: list[ProcessRecord] = []
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        for ref in ("meshrole/warehouse-gateways", "nodeupgrade/demo-to-0-2-0", "backup/nightly",
                    "restore/nuc-02-config-preview", "healthcheck/edge-basics", "healthcheck/demo-sandbox",
                    "healthcheck/demo-capped-restart"):
            assert f"{ref} Ready" in up.stdout
        # The example's night-time rollout from the internet is checked, not applied: it would hold the nodes.
        assert "nodeupgrade/to-0-2-0 from nodeupgrade.yaml accepted (server dry run" in up.stdout
        assert "nodeupgrade/to-0-2-0 Ready" not in up.stdout
        assert "kubectl get nodeupgrades -w" in up.stdout
        assert "kubectl get maculaos" in up.stdout
        kubeconfig = workdir / "controlplane" / "admin.kubeconfig"
        nodes = subprocess.run([str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", "get", "nodes", "-o", "name"],
                               capture_output=True, text=True, check=True).stdout.split()
        assert len(nodes) == 3
        for node in nodes:
            host_root = workdir / "nodes" / node.split("/")[1]
            assert (host_root / "var/lib/maculaos/config.yaml").exists()

        # The first backup, taken at start, is what the Restore example brings back.
        backup = get(bin_dir, kubeconfig, "backup/nightly")["status"]
        assert backup["run"]["reason"] == "OnDemand"
        assert {n: e["phase"] for n, e in backup["nodes"].items()} == {n.split("/")[1]: "Succeeded" for n in nodes}
        restore = get(bin_dir, kubeconfig, "restore/nuc-02-config-preview")["status"]
        assert restore["phase"] == "Succeeded", restore
        preview = workdir / "nodes/macula-nuc-02/var/lib/maculaos-restore/preview"
        restored = list(preview.rglob("var/lib/maculaos/config.yaml"))
        assert restored and "maculaos:" in restored[0].read_text(), sorted(preview.rglob("*"))

        # Health checks that hold on sandbox nodes, and one failing on purpose whose restarts stop at the cap.
        assert "healthcheck/demo-sandbox: 3 of 3 nodes healthy" in up.stdout
        assert get(bin_dir, kubeconfig, "healthcheck/demo-sandbox")["status"]["healthyNodes"] == 3
        for node, history in capped_history(bin_dir, kubeconfig).items():
            notes = [h.split(" ", 1)[1] for h in history]
            assert [n.split(":")[0] for n in notes] == [
                "restart of maculaos-demo-absent.service failed (1/2 in 1h)",
                "restart of maculaos-demo-absent.service failed (2/2 in 1h)",
                "not restarting maculaos-demo-absent.service"], (node, notes)

        # The demo's own NodeUpgrade rolls 0.1.0 -> 0.2.0 across the nodes with their real RAUC, from the
        # local release index, one node at a time, judged by the sandbox checks only (the capped one fails).
        status = wait_upgrade(bin_dir, kubeconfig, "demo-to-0-2-0")
        print(f"demo-to-0-2-0 ended {status['phase']}: {time.monotonic() - started:.1f}s after dev up started")
        assert (status["phase"], status["upgradedNodes"], status["failedNodes"]) == ("Succeeded", 3, 0), status
        names = [n.split("/")[1] for n in nodes]
        assert {n: (e["fromVersion"], e["version"], e["slot"]) for n, e in status["nodes"].items()} == {
            n: ("0.1.0", "0.2.0", "B") for n in names}, status["nodes"]
        for name in names:
            labels = get(bin_dir, kubeconfig, f"node/{name}")["metadata"]["labels"]
            assert labels[VERSION_LABEL] == "0.2.0"
            assert 'VERSION_ID="0.2.0"' in (workdir / "nodes" / name / "etc/os-release").read_text()
        finished = sorted(e["since"] for e in status["rollout"].values())
        assert len(set(finished)) == 3, "one node after another"
        agents += [ProcessRecord(**json.loads(p.read_text())["agent"]) for p in (workdir / "rauc").glob("*/node.json")]
        assert len(agents) == 3 and all(is_running(a) for a in agents), "each node's agent, restarted by its reboot"

        # The bad build (beta 0.3.0), applied as a later command would, from the state file: the first node
        # panics on it, is back on 0.2.0 by itself, and the rollout stops there.
        bad = Demo(workdir, REPO, health_check_wait="2s", delay_between_nodes="0s").apply_bad_upgrade()
        status = wait_upgrade(bin_dir, kubeconfig, bad)
        assert (status["phase"], status["upgradedNodes"], status["failedNodes"]) == ("Failed", 0, 1), status
        # The operator's record (the nodes' entries turn Idle once the failed rollout lets the nodes go).
        rolled = [e["message"] for e in status["rollout"].values() if e["stage"] == "RolledBack"]
        others = {e["stage"] for e in status["rollout"].values() if e["stage"] != "RolledBack"}
        assert len(rolled) == 1 and "slot rootfs.0 did not boot" in rolled[0], status["rollout"]
        assert others <= {"Installing"}, status["rollout"]  # installed at most: never rebooted into the bad build
        for name in names:
            assert get(bin_dir, kubeconfig, f"node/{name}")["metadata"]["labels"][VERSION_LABEL] == "0.2.0"
            assert 'VERSION_ID="0.2.0"' in (workdir / "nodes" / name / "etc/os-release").read_text()

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
                                         "release-server", "operator", "agent-macula-nuc-01", "agent-macula-nuc-02",
                                         "agent-macula-pi-03"}
    assert not any(is_running(r) for r in [*records, *agents])
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
