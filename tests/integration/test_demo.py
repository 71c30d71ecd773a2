"""The README's first command: `make demo` (its own command, `maculaos dev up`, read from the Makefile) brings
the whole demo up, the tour plays on it, `dev down` leaves nothing running."""

from __future__ import annotations

import json
import os
import re
import shlex
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
from maculaos.devenv.demo_objects import BAD_UPGRADE
from maculaos.devenv.processes import ProcessRecord, is_running
from maculaos.devenv.tour import STEPS
from tests.integration.conftest import REPO


def maculaos(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "maculaos", *args], input=stdin, capture_output=True, text=True,
                          timeout=300)


def make_command(target: str) -> list[str]:
    """What `make <target>` runs, as make itself reads the Makefile (its `install` prerequisite left out:
    tools/install.sh has run before any test)."""
    # Not as a sub-make of `make test`: that one's variables would make this one print its directory too.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    dry = subprocess.run(["make", "--no-print-directory", "--dry-run", "--old-file=install", target], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True)
    (line,) = dry.stdout.splitlines()
    return shlex.split(line)


def make_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """`make demo`'s own command, run from the checkout as make runs it, with the test's work directory and
    pace added; this checkout's code first (the venv may be shared by several checkouts)."""
    command = make_command("demo")
    assert command == [".venv/bin/maculaos", "dev", "up"], command
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*command, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


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


def assert_tour(output: str, workdir: Path) -> None:
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
    assert re.search(r"tour-bad-path +nightly +macula-nuc-01 +(Pending|Failed) +False .* RestoreRefused", bad), bad
    assert ("spec.paths[0]: /home/macula/notes is not under any path Backup nightly includes "
            "(/var/lib/maculaos, /var/lib/data)") in bad, bad
    # The tour itself fails when the demo's upgrade does not end Succeeded or the bad build is not rolled back.
    assert re.search(r"demo-to-0-2-0 .*Succeeded", steps["upgrade"]), steps["upgrade"]
    assert steps["upgrade"].count("0.1.0 -> 0.2.0 slot B") == 3, steps["upgrade"]
    assert "RolledBack: " in steps["rollback"] and "did not boot" in steps["rollback"], steps["rollback"]
    assert "5 of 5 step(s) played" in output


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
    up = make_demo("--workdir", str(workdir), "--upgrade-check-wait", "2s", "--upgrade-delay", "0s",
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

        # The tour, through its own command on this demo: what the person sees at each step.
        tour = maculaos("dev", "tour", "--pause", "--workdir", str(workdir), stdin="\n" * (len(STEPS) - 1))
        assert tour.returncode == 0, tour.stderr + tour.stdout
        assert tour.stdout.count("(press Enter for the next step)") == len(STEPS) - 1
        assert_tour(tour.stdout, workdir)
        one = maculaos("dev", "tour", "--step", "bad-object", "--workdir", str(workdir))   # no --pause: no prompt
        assert one.returncode == 0, one.stderr + one.stdout
        assert list(tour_steps(one.stdout)) == ["bad-object"] and "1 of 1 step(s) played" in one.stdout
        assert "press Enter" not in one.stdout

        # After the tour's rollback step: the bad build's rollout stopped at its first node, which is back on
        # 0.2.0 by itself; no node runs 0.3.0.
        status = wait_upgrade(bin_dir, kubeconfig, BAD_UPGRADE)
        assert (status["phase"], status["upgradedNodes"], status["failedNodes"]) == ("Failed", 0, 1), status
        others = {e["stage"] for e in status["rollout"].values() if e["stage"] != "RolledBack"}
        assert others <= {"Installing"}, status["rollout"]  # installed at most: never rebooted into the bad build
        # Its record of the rolled-back node stays on the object: once both rollouts have finished the older
        # one holds the nodes again, and the agents leave a finished rollout's entries as they were.
        rolled = next(n for n, e in status["rollout"].items() if e["stage"] == "RolledBack")
        deadline = time.monotonic() + 12  # a few of the agents' passes
        while time.monotonic() < deadline:
            entry = get(bin_dir, kubeconfig, f"nodeupgrade/{BAD_UPGRADE}")["status"]["nodes"][rolled]
            assert "in charge" not in entry["message"], entry
            time.sleep(1)
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


def test_make_demo_and_demo_stop_are_dev_up_and_down() -> None:
    """The README's two commands, as make reads them: what the demo test runs is what a person runs."""
    assert make_command("demo") == [".venv/bin/maculaos", "dev", "up"]
    assert ".venv/bin/maculaos dev down" in " ".join(make_command("demo-stop"))


def test_the_tour_lists_its_steps_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    listed = maculaos("dev", "tour", "--list", "--workdir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [s.name for s in STEPS]
    unknown = maculaos("dev", "tour", "--step", "upgrades", "--workdir", str(tmp_path))
    assert unknown.returncode != 0
    assert "no step 'upgrades'; the steps: backup-restore, health, bad-object, upgrade, rollback" in unknown.stderr
    no_demo = maculaos("dev", "tour", "--step", "health", "--workdir", str(tmp_path))
    assert no_demo.returncode != 0 and "no demo control plane runs" in no_demo.stderr, no_demo.stderr


def test_the_release_index_and_pace_the_tour_reads(tmp_path: Path) -> None:
    """The upgrade and rollback steps' interface: state.json's release index (none: the steps are skipped) and
    the pace `dev up` was given, which a later command keeps."""
    demo = Demo(tmp_path, REPO)
    with pytest.raises(DemoError, match="no demo release server runs"):
        demo.release_index()
    state = {"processes": [], "api_port": 1, "release_index": "http://127.0.0.1:8080/index.json",
             "upgrade_timings": {"health_check_wait": "2s", "delay_between_nodes": "0s"}}
    demo.state_file.write_text(json.dumps(state))
    later = Demo(tmp_path, REPO)
    assert later.release_index() == "http://127.0.0.1:8080/index.json"
    assert later._timings() == {"health_check_wait": "2s", "delay_between_nodes": "0s"}


def test_a_malformed_example_fails_loudly_before_anything_starts(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "examples", repo / "examples")
    (repo / "examples" / "broken.yaml").write_text("kind: MeshRole\nspec: [unclosed\n")
    workdir = tmp_path / "demo"
    with pytest.raises(DemoError, match="broken.yaml is not valid YAML"):
        Demo(workdir, repo).up()
    assert not workdir.exists()
