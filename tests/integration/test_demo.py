"""The README's first command: `maculaos dev up` brings the whole demo up, `dev down` leaves nothing running."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from maculaos.devenv.demo import Demo, DemoError
from maculaos.devenv.demo_objects import DemoReleases
from maculaos.devenv.processes import ProcessRecord, is_running
from maculaos.devenv.tour import STEPS
from tests.integration.conftest import REPO


def maculaos(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "maculaos", *args], input=stdin, capture_output=True, text=True,
                          timeout=300)


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


def tour_steps(output: str) -> dict[str, str]:
    """The tour's output by step name (each step begins with "== n/N name: title")."""
    output = output.replace("\n(press Enter for the next step) ", "")   # --pause's prompt, between steps
    parts = re.split(r"^== \d+/\d+ ([a-z-]+): .*$", output, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def assert_tour(output: str, workdir: Path, releases: DemoReleases | None) -> None:
    steps = tour_steps(output)
    assert list(steps) == [s.name for s in STEPS], output
    backup = steps["backup-restore"]
    notes = workdir / "nodes/macula-nuc-01/var/lib/data/tour/notes.txt"
    assert backup.count(f"$ cat {notes}") == 3 and "changed by mistake" in backup, backup
    before = re.search(r"written by the tour at [0-9:]+, before the backup", backup)
    assert before and backup.rstrip().endswith(before.group(0)), backup   # what the person sees last: it is back
    assert notes.read_text().strip() == before.group(0)
    assert re.search(r"nightly .* 3/3 backed up", backup), backup
    assert re.search(r"tour-restore +nightly +macula-nuc-01 +[0-9a-f]{8} +Succeeded", backup), backup
    health = steps["health"]
    outcomes = re.findall(r"tour-service +1 +3 +True +(\d/3 healthy[^A]*?) +Accepted", health)
    assert [o.strip() for o in outcomes] == ["0/3 healthy, 3 unhealthy", "3/3 healthy"], health
    assert health.count("Unhealthy: failing: service-port") == 3, health
    assert 'healthcheck.os.macula.io "tour-service" deleted' in health
    bad = steps["bad-object"]
    assert 'The HealthCheck "tour-bad-interval" is invalid' in bad, bad
    assert '* spec.checks[0].interval: Invalid value: "every minute"' in bad, bad
    assert '"tour-bad-interval" not found' in bad, bad
    assert re.search(r"tour-bad-path +nightly +macula-nuc-01 +Pending +False .* RestoreRefused", bad), bad
    assert ("spec.paths[0]: /home/macula/notes is not under any path Backup nightly includes "
            "(/var/lib/maculaos, /var/lib/data)") in bad, bad
    if releases is None:
        for name in ("upgrade", "rollback"):
            assert steps[name].strip().startswith("skipped: this demo serves no release index"), steps[name]
        assert "3 of 5 step(s) played" in output
    else:
        # The tour itself fails when an upgrade does not end Succeeded or a bad build is not rolled back.
        assert re.search(r"tour-upgrade .*Succeeded", steps["upgrade"]), steps["upgrade"]
        assert f"{releases.bad} is a bad build" in steps["rollback"], steps["rollback"]
        assert "5 of 5 step(s) played" in output


def test_demo_up_and_down(tmp_path: Path, bin_dir: Path) -> None:
    workdir = tmp_path / "demo"
    up = maculaos("dev", "up", "--workdir", str(workdir))
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        for ref in ("meshrole/warehouse-gateways", "nodeupgrade/to-0-2-0", "backup/nightly",
                    "restore/nuc-02-config-preview", "healthcheck/edge-basics", "healthcheck/demo-sandbox",
                    "healthcheck/demo-capped-restart"):
            assert f"{ref} Ready" in up.stdout
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
        # The tour, through its own command on this demo: what the person sees at each step.
        tour = maculaos("dev", "tour", "--pause", "--workdir", str(workdir), stdin="\n" * (len(STEPS) - 1))
        assert tour.returncode == 0, tour.stderr + tour.stdout
        assert tour.stdout.count("(press Enter for the next step)") == len(STEPS) - 1
        assert_tour(tour.stdout, workdir, Demo(workdir, REPO).releases())
        one = maculaos("dev", "tour", "--step", "bad-object", "--workdir", str(workdir))   # no --pause: no prompt
        assert one.returncode == 0, one.stderr + one.stdout
        assert list(tour_steps(one.stdout)) == ["bad-object"] and "1 of 1 step(s) played" in one.stdout
        assert "press Enter" not in one.stdout
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


def test_the_tour_lists_its_steps_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    listed = maculaos("dev", "tour", "--list", "--workdir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [s.name for s in STEPS]
    unknown = maculaos("dev", "tour", "--step", "upgrades", "--workdir", str(tmp_path))
    assert unknown.returncode != 0
    assert "no step 'upgrades'; the steps: backup-restore, health, bad-object, upgrade, rollback" in unknown.stderr
    no_demo = maculaos("dev", "tour", "--step", "health", "--workdir", str(tmp_path))
    assert no_demo.returncode != 0 and "no demo control plane runs" in no_demo.stderr, no_demo.stderr


def test_the_demo_releases_the_tour_reads(tmp_path: Path) -> None:
    """The upgrade and rollback steps' interface: state.json's releases, or none."""
    demo = Demo(tmp_path, REPO)
    assert demo.releases() is None
    state = {"processes": [], "api_port": 1}
    demo.state_file.write_text(json.dumps(state))
    assert demo.releases() is None
    releases = {"release_index": "http://127.0.0.1:8080/index.json", "installed": "0.1.0", "good": "0.2.0",
                "bad": "0.2.1-bad"}
    demo.state_file.write_text(json.dumps({**state, "releases": releases}))
    assert demo.releases() == DemoReleases(**releases)
    demo.state_file.write_text(json.dumps({**state, "releases": {**releases, "good": None}}))
    with pytest.raises(ValidationError, match="good"):
        demo.releases()


def test_a_malformed_example_fails_loudly_before_anything_starts(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "examples", repo / "examples")
    (repo / "examples" / "broken.yaml").write_text("kind: MeshRole\nspec: [unclosed\n")
    workdir = tmp_path / "demo"
    with pytest.raises(DemoError, match="broken.yaml is not valid YAML"):
        Demo(workdir, repo).up()
    assert not workdir.exists()
