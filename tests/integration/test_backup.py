"""Backups and Restores end to end: the real control plane, the operator as a process, three agents on
sandbox host roots running the real restic 0.18 against local repositories and real rest-servers on
loopback. Proves: an on-demand run backs up every node once; a scheduled run happens exactly once per
scheduled time, also across an operator restart, with at most maxConcurrentNodes at a time; a Restore
swaps the data back, and a Restore of a missing snapshot, or one whose staging fills the node's disk, fails
and changes nothing; mesh copies land on
the peers the operator chose, through rest-servers that ask for the users of each node's config.yaml
htpasswd (a Backup without credentials is refused, and says which field to set)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from maculaos.devenv.controlplane import default_bin_dir
from maculaos.devenv.demo import start_agent
from maculaos.devenv.netns import create_netns, delete_netns, netns_name, nft_wrapper
from maculaos.devenv.nodes import create_host_root, demo_fleet
from maculaos.devenv.processes import ProcessRecord, is_running, stop
from maculaos.host.config import write_maculaos_section
from tests.diskfull import resize, small_tmpfs
from tests.fakes import fake_systemctl
from tests.htpasswd import htpasswd_line
from tests.integration.conftest import API_SERVER_OUTAGE_SECONDS, Cluster, OperatorSupervisor
from tests.restic_locks import REUSED_PID, leave_stale_lock, lock_count
from tests.restserver import RestServer, start_rest_server

Create = Callable[[dict[str, Any]], dict[str, Any]]
NODES = [n.name for n in demo_fleet(3)]
PASSWORD = "correct horse battery staple"
#: The user every node's rest-server lets in (config.yaml maculaos.backup_server.htpasswd) and its Secret.
MESH_USER, MESH_PASSWORD = "mesh", "peers only, please"
MESH_CREDENTIALS = {"name": "mesh-peers", "key": "basic"}


@dataclass
class BackupFleet:
    cluster: Cluster
    roots: dict[str, Path]
    log_dir: Path
    agents: dict[str, ProcessRecord] = field(default_factory=dict)

    def entry(self, kind: str, name: str, node: str) -> dict[str, Any]:
        return dict(((self.cluster.get(kind, name).get("status") or {}).get("nodes") or {}).get(node) or {})

    def wait_entry(self, kind: str, name: str, node: str, pred: Callable[[dict[str, Any]], bool],
                   timeout: float = 90) -> dict[str, Any]:
        self.cluster.wait_for(lambda: pred(self.entry(kind, name, node)), timeout,
                              what=lambda: f"{kind}/{name} on {node} (now {self.entry(kind, name, node)})")
        return self.entry(kind, name, node)

    def snapshots(self, node: str, repo: str, user: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": repo}
        if user:
            env |= {"RESTIC_REST_USERNAME": user[0], "RESTIC_REST_PASSWORD": user[1]}
        out = subprocess.run([str(default_bin_dir() / "restic"), "--no-cache", "snapshots", "--json", "--no-lock"],
                             env=env, capture_output=True, text=True, check=True).stdout
        return list(json.loads(out))


@pytest.fixture(scope="module")
def fleet(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupFleet]:
    root = tmp_path_factory.mktemp("backup-fleet")
    made = BackupFleet(cluster, {}, root / "logs")
    namespaces = []
    try:
        for sim in demo_fleet(3):
            ns = netns_name(root, sim.name)
            create_netns(ns)
            namespaces.append(ns)
            made.roots[sim.name] = create_host_root(root / sim.name, sim)
            made.agents[sim.name] = start_agent(cluster.plane.kubeconfig, made.log_dir, sim.name,
                                                made.roots[sim.name], nft_wrapper(root / f"nft-{sim.name}", ns),
                                                resync_seconds=3,
                                                systemctl=str(fake_systemctl(root / f"sd-{sim.name}")))
        cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "backup-repo",
                       "namespace": "maculaos-system"}, "stringData": {"password": PASSWORD}})
        yield made
    finally:
        for node, agent in made.agents.items():
            stop(agent)
            print(f"--- agent {node}\n" + Path(agent.log).read_text()[-4000:])
        for ns in namespaces:
            delete_netns(ns)


def backup(name: str, target: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": "Backup", "metadata": {"name": name},
            "spec": {"target": target, "include": ["/var/lib/maculaos", "/var/lib/data"], "exclude": [],
                     "repositoryPasswordSecretRef": {"name": "backup-repo", "key": "password"}, **spec}}


def run_now(cluster: Cluster, name: str, token: str) -> None:
    cluster.kubectl("annotate", "--overwrite", "backup", name, f"os.macula.io/run-now={token}")


def test_on_demand_backup_then_restore_swaps_data(fleet: BackupFleet, created: Create,
                                                  operator: ProcessRecord) -> None:
    data = fleet.roots["macula-nuc-01"] / "var/lib/data"
    (data / "orders.csv").write_text("id,total\n1,9.50\n")
    created(backup("ondemand", {"local": {"path": "/var/backups/restic"}}, schedule="0 3 1 1 *"))
    fleet.cluster.wait_condition("Backup", "ondemand", "True")
    run_now(fleet.cluster, "ondemand", "first")
    for node in NODES:
        entry = fleet.wait_entry("Backup", "ondemand", node, lambda e: e.get("phase") in ("Succeeded", "Failed"))
        assert entry["phase"] == "Succeeded", entry
        assert entry["lastSnapshotId"] and entry["filesNew"] >= 1 and entry["durationSeconds"] > 0
        snaps = fleet.snapshots(node, str(fleet.roots[node] / "var/backups/restic"))
        assert [s["id"] for s in snaps] == [entry["lastSnapshotId"]]
    fleet.cluster.wait_for(lambda: fleet.cluster.get("Backup", "ondemand")["status"]["run"].get("completionTime"),
                           what="the operator to close the run once every node reported")
    status = fleet.cluster.get("Backup", "ondemand")["status"]
    assert status["run"]["reason"] == "OnDemand"
    fleet.cluster.wait_for(lambda: fleet.cluster.get("Backup", "ondemand")["status"].get("lastSuccessfulTime"),
                           what="lastSuccessfulTime")
    assert fleet.cluster.condition("Backup", "ondemand", "Failed")["status"] == "False"

    (data / "orders.csv").write_text("lost by mistake\n")
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "Restore", "metadata": {"name": "undo-mistake"},
             "spec": {"backupName": "ondemand", "nodeName": "macula-nuc-01", "snapshot": {"latest": True},
                      "paths": ["/var/lib/data"]}})
    entry = fleet.wait_entry("Restore", "undo-mistake", "macula-nuc-01",
                             lambda e: e.get("phase") in ("Succeeded", "Failed"))
    assert entry["phase"] == "Succeeded", entry
    assert (data / "orders.csv").read_text() == "id,total\n1,9.50\n"
    fleet.cluster.wait_for(lambda: fleet.cluster.get("Restore", "undo-mistake")["status"].get("phase") == "Succeeded",
                           what="Restore phase Succeeded")

    (data / "orders.csv").write_text("today's orders\n")
    created({"apiVersion": "os.macula.io/v1alpha1", "kind": "Restore", "metadata": {"name": "no-such-snapshot"},
             "spec": {"backupName": "ondemand", "nodeName": "macula-nuc-01", "snapshot": {"id": "deadbeef"}}})
    entry = fleet.wait_entry("Restore", "no-such-snapshot", "macula-nuc-01",
                             lambda e: e.get("phase") in ("Succeeded", "Failed"))
    assert entry["phase"] == "Failed" and "deadbeef does not exist" in entry["message"]
    assert (data / "orders.csv").read_text() == "today's orders\n"


def test_wrong_password_fails_clearly_and_touches_nothing(fleet: BackupFleet, created: Create,
                                                          operator: ProcessRecord) -> None:
    node = "macula-pi-03"
    created(backup("pw-first", {"local": {"path": "/var/backups/pw"}}, schedule="0 3 1 1 *",
                   nodeSelector={"matchLabels": {"kubernetes.io/hostname": node}}))
    run_now(fleet.cluster, "pw-first", "1")
    assert fleet.wait_entry("Backup", "pw-first", node, lambda e: e.get("phase") == "Succeeded")
    created({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other-pw", "namespace": "maculaos-system"},
             "stringData": {"password": "not the one"}})
    created(backup("pw-second", {"local": {"path": "/var/backups/pw"}}, schedule="0 3 1 1 *",
                   nodeSelector={"matchLabels": {"kubernetes.io/hostname": node}},
                   repositoryPasswordSecretRef={"name": "other-pw", "key": "password"}))
    run_now(fleet.cluster, "pw-second", "1")
    entry = fleet.wait_entry("Backup", "pw-second", node, lambda e: e.get("phase") == "Failed")
    assert entry["failure"] == "WrongPassword" and "repositoryPasswordSecretRef" in entry["message"]
    failed = fleet.cluster.wait_condition("Backup", "pw-second", "True", ctype="Failed")
    assert failed["reason"] == "WrongPassword" and node in failed["message"]
    assert len(fleet.snapshots(node, str(fleet.roots[node] / "var/backups/pw"))) == 1

    # The password fixed, the next run succeeds: the entry no longer says why the previous one failed (its
    # `failure` key used to survive, so a healthy node still read WrongPassword).
    fleet.cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other-pw",
                         "namespace": "maculaos-system"}, "stringData": {"password": PASSWORD}})
    run_now(fleet.cluster, "pw-second", "2")
    entry = fleet.wait_entry("Backup", "pw-second", node, lambda e: e.get("phase") == "Succeeded")
    assert "failure" not in entry and entry["lastError"] == "" and entry["lastSnapshotId"], entry
    fleet.cluster.wait_condition("Backup", "pw-second", "False", ctype="Failed")
    report = fleet.cluster.get("NodeReport", node)["status"]["entries"]["Backup/pw-second"]["report"]
    assert "failure" not in report, report


def test_a_lock_left_by_a_node_that_died_does_not_stop_the_next_run(fleet: BackupFleet, created: Create,
                                                                  operator: ProcessRecord) -> None:
    """The node died mid-backup and booted again: its repository keeps the dead restic's lock, whose pid
    now belongs to another live process (tests/restic_locks.py). The next run backs up and applies
    retention (restic forget: an exclusive lock) as if nothing had happened, and leaves no lock behind."""
    node = "macula-nuc-02"
    repo = {"RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(fleet.roots[node] / "var/backups/stale")}
    zero = {k: 0 for k in ("keepHourly", "keepDaily", "keepWeekly", "keepMonthly", "keepYearly")}
    created(backup("stale-lock", {"local": {"path": "/var/backups/stale"}}, schedule="0 3 1 1 *",
                   retention={"keepLast": 1, **zero}, nodeSelector={"matchLabels": {"kubernetes.io/hostname": node}}))
    run_now(fleet.cluster, "stale-lock", "1")
    first = fleet.wait_entry("Backup", "stale-lock", node, lambda e: e.get("phase") in ("Succeeded", "Failed"))
    assert first["phase"] == "Succeeded", first
    leave_stale_lock(repo, REUSED_PID)
    run_now(fleet.cluster, "stale-lock", "2")
    second = fleet.wait_entry("Backup", "stale-lock", node, lambda e: e.get("phase") in ("Succeeded", "Failed")
                              and e.get("runId") != first["runId"])
    assert second["phase"] == "Succeeded" and second["snapshotsRemoved"] == 1, second
    assert [s["id"] for s in fleet.snapshots(node, repo["RESTIC_REPOSITORY"])] == [second["lastSnapshotId"]], \
        "retention ran past the lock: only the newest snapshot is left"
    assert lock_count(repo) == 0


def test_a_restore_whose_staging_fills_the_disk_fails_and_changes_nothing(fleet: BackupFleet, created: Create,
                                                                          operator: ProcessRecord) -> None:
    """The node's /var/lib/data on a tmpfs with room for its files but not for the staged copy a Restore
    writes beside them: the real agent reports the Restore Failed naming this node's disk (not the backup
    target), the data keeps its current files and no staging is left holding space; the Restore shows
    Failed and Degraded. Once the disk has room, a new Restore brings the data back."""
    node = "macula-nuc-02"
    data = fleet.roots[node] / "var/lib/data"
    (data / "shop").mkdir(parents=True, exist_ok=True)
    (data / "shop/orders.csv").write_text("id,total\n1,9.50\n")
    (data / "shop/photos.bin").write_bytes(os.urandom(300 * 1024))  # incompressible: the staged copy needs it all
    created(backup("full-staging", {"local": {"path": "/var/backups/full-staging"}}, schedule="0 3 1 1 *",
                   nodeSelector={"matchLabels": {"kubernetes.io/hostname": node}}))
    fleet.cluster.wait_condition("Backup", "full-staging", "True")
    run_now(fleet.cluster, "full-staging", "1")
    entry = fleet.wait_entry("Backup", "full-staging", node, lambda e: e.get("phase") in ("Succeeded", "Failed"))
    assert entry["phase"] == "Succeeded", entry
    (data / "shop/orders.csv").write_text("lost by mistake\n")
    used = sum(-(-p.stat().st_size // 4096) * 4096 for p in data.rglob("*") if p.is_file())

    def restore(name: str) -> dict[str, Any]:
        return {"apiVersion": "os.macula.io/v1alpha1", "kind": "Restore", "metadata": {"name": name},
                "spec": {"backupName": "full-staging", "nodeName": node, "snapshot": {"latest": True},
                         "paths": ["/var/lib/data/shop"]}}

    with small_tmpfs(data, used + 128 * 1024) as disk:
        created(restore("full-staging-undo"))
        entry = fleet.wait_entry("Restore", "full-staging-undo", node,
                                 lambda e: e.get("phase") in ("Succeeded", "Failed"))
        assert entry["phase"] == "Failed", entry
        assert "no space left on this node's disk" in entry["message"], entry["message"]
        assert "backup target" not in entry["message"] and "nothing changed" in entry["message"], entry["message"]
        assert (disk / "shop/orders.csv").read_text() == "lost by mistake\n", "the data keeps its current files"
        assert not [p for p in disk.rglob("*") if "maculaos-" in p.name], "no staging left holding space"
        degraded = fleet.cluster.wait_condition("Restore", "full-staging-undo", "True", ctype="Degraded")
        assert node in degraded["message"], degraded
        assert fleet.cluster.get("Restore", "full-staging-undo")["status"]["phase"] == "Failed"
        resize(disk, used + 4 * 1024 * 1024)
        created(restore("full-staging-again"))
        entry = fleet.wait_entry("Restore", "full-staging-again", node,
                                 lambda e: e.get("phase") in ("Succeeded", "Failed"))
        assert entry["phase"] == "Succeeded", entry
        assert (disk / "shop/orders.csv").read_text() == "id,total\n1,9.50\n"


def test_a_run_rides_out_an_api_server_outage(fleet: BackupFleet, created: Create,
                                              operator_supervisor: OperatorSupervisor) -> None:
    """The API server goes away (API_SERVER_OUTAGE_SECONDS, past the operator's Lease) as soon as the
    operator has started an on-demand run: the agents back up (or have) and report once it is back, the
    restarted operator (it lost its Lease and exits by design) closes the run, and every node holds
    exactly one snapshot of it (nothing run twice)."""
    operator = operator_supervisor.ensure_running()
    created(backup("outage-run", {"local": {"path": "/var/backups/outage"}}, schedule="0 3 1 1 *"))
    fleet.cluster.wait_condition("Backup", "outage-run", "True")
    run_now(fleet.cluster, "outage-run", "1")
    fleet.cluster.wait_for(lambda: (fleet.cluster.get("Backup", "outage-run").get("status") or {}).get("run", {})
                           .get("id"), what="the operator to start the run")
    run_id = fleet.cluster.get("Backup", "outage-run")["status"]["run"]["id"]
    fleet.cluster.plane.restart_apiserver(down_seconds=API_SERVER_OUTAGE_SECONDS)
    assert all(is_running(agent) for agent in fleet.agents.values()), "the agents rode the outage out"
    fleet.cluster.wait_for(lambda: not is_running(operator), timeout=30, what="the operator to give up its Lease")
    operator_supervisor.ensure_running()
    for node in NODES:
        entry = fleet.wait_entry("Backup", "outage-run", node, lambda e: e.get("phase") in ("Succeeded", "Failed"))
        assert entry["phase"] == "Succeeded" and entry["runId"] == run_id, entry
        snaps = fleet.snapshots(node, str(fleet.roots[node] / "var/backups/outage"))
        assert [s["id"] for s in snaps] == [entry["lastSnapshotId"]], "one snapshot per node: nothing run twice"
    fleet.cluster.wait_for(lambda: fleet.cluster.get("Backup", "outage-run")["status"]["run"].get("completionTime"),
                           what="the operator to close the run once every node reported")
    assert fleet.cluster.get("Backup", "outage-run")["status"]["run"]["id"] == run_id


def test_scheduled_runs_happen_once_each_across_an_operator_restart(
        fleet: BackupFleet, created: Create, operator: ProcessRecord, operator_supervisor: OperatorSupervisor) -> None:
    """Every minute, one node at a time; the operator is restarted mid-way. Each node's snapshots carry the
    run id: none may appear twice, and runs of one scheduled time never overlap across nodes."""
    created(backup("every-minute", {"local": {"path": "/var/backups/minute"}}, schedule="* * * * *",
                   maxConcurrentNodes=1))

    def run_ids(node: str) -> list[str]:
        tags = [t for s in fleet.snapshots(node, str(fleet.roots[node] / "var/backups/minute")) for t in s["tags"]]
        return [t.split("=", 1)[1] for t in tags if t.startswith("maculaos-run=")]

    def all_done_after(previous: str | None) -> bool:
        entries = [fleet.entry("Backup", "every-minute", n) for n in NODES]
        return all(e.get("phase") == "Succeeded" and e.get("runId") != previous for e in entries) and \
            len({e.get("runId") for e in entries}) == 1

    fleet.cluster.wait_for(lambda: all_done_after(None), timeout=150, what="a first scheduled run on every node")
    first = fleet.cluster.get("Backup", "every-minute")["status"]
    assert first["run"]["reason"] == "Scheduled" and first["run"]["id"].startswith("sched-")
    intervals = sorted((e["runStartTime"], e["lastRunTime"]) for e in first["nodes"].values()
                       if e.get("runId") == first["run"]["id"])
    assert len(intervals) == 3
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(intervals)), f"overlapping runs: {intervals}"

    assert operator_supervisor.record is not None
    stop(operator_supervisor.record)
    operator_supervisor.ensure_running()
    fleet.cluster.wait_for(lambda: all_done_after(first["run"]["id"]), timeout=150,
                           what="a scheduled run on every node after the operator restart")
    fleet.cluster.kubectl("patch", "backup", "every-minute", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    for node in NODES:
        ids = run_ids(node)
        assert len(ids) >= 2 and len(ids) == len(set(ids)), f"{node} ran a scheduled time twice: {ids}"
    assert fleet.cluster.get("Backup", "every-minute")["status"]["missedRuns"] == 0


@pytest.fixture
def rest_servers(fleet: BackupFleet, cluster: Cluster) -> Iterator[dict[str, RestServer]]:
    """A real rest-server per node, declared in each node's config.yaml with the htpasswd it serves (the
    agents advertise them; the server asks for that user, as the image's unit does)."""
    line = htpasswd_line(MESH_USER, MESH_PASSWORD)
    htpasswd = fleet.log_dir.parent / "mesh.htpasswd"
    htpasswd.write_text(f"{line}\n")
    htpasswd.chmod(0o600)
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": MESH_CREDENTIALS["name"],
                   "namespace": "maculaos-system"}, "stringData": {"basic": f"{MESH_USER}:{MESH_PASSWORD}"}})
    servers = {n: start_rest_server(fleet.log_dir.parent / f"rest-{n}", fleet.log_dir, f"rest-server-{n}",
                                    htpasswd=htpasswd) for n in NODES}
    try:
        for node, server in servers.items():
            write_maculaos_section(fleet.roots[node], "backup_server", {"url": server.url, "htpasswd": line})
        for node, server in servers.items():
            cluster.wait_for(lambda node=node, server=server: advertised(cluster, node) == server.url, 30,
                             what=f"{node}'s agent to advertise its rest-server")
        yield servers
    finally:
        for node, server in servers.items():
            write_maculaos_section(fleet.roots[node], "backup_server", None)
            server.stop()
        for node in NODES:
            cluster.wait_for(lambda node=node: advertised(cluster, node) is None, 30,
                             what=f"{node} to withdraw its server")


def advertised(cluster: Cluster, node: str) -> str | None:
    annotations = cluster.get("Node", node)["metadata"].get("annotations") or {}
    return annotations.get("os.macula.io/backup-server")


def test_mesh_copies_land_on_two_peers(fleet: BackupFleet, created: Create, operator: ProcessRecord,
                                       rest_servers: dict[str, RestServer]) -> None:
    for node in NODES:  # each server asks for its users: the agents advertise it as such
        condition = next(c for c in fleet.cluster.get("Node", node)["status"]["conditions"]
                         if c["type"] == "MaculaBackupServer")
        assert condition["reason"] == "Serving" and "htpasswd" in condition["message"], condition
    created(backup("mesh", {"mesh": {"replicationFactor": 2, "credentialsSecretRef": MESH_CREDENTIALS}},
                   schedule="0 3 1 1 *"))
    fleet.cluster.wait_condition("Backup", "mesh", "True")
    run_now(fleet.cluster, "mesh", "go")
    by_url = {s.url: n for n, s in rest_servers.items()}
    for node in NODES:
        entry = fleet.wait_entry("Backup", "mesh", node, lambda e: e.get("phase") in ("Succeeded", "Failed"))
        assert entry["phase"] == "Succeeded", entry
        assert len(entry["targets"]) == 2
        holders = {by_url[t.removeprefix("rest:").rstrip("/").rsplit("/", 1)[0]] for t in entry["targets"]}
        assert node not in holders and len(holders) == 2
        for holder in holders:
            assert (rest_servers[holder].data / node / "config").exists()
            repo = f"rest:{rest_servers[holder].url}/{node}/"
            assert len(fleet.snapshots(node, repo, (MESH_USER, MESH_PASSWORD))) == 1
            with pytest.raises(subprocess.CalledProcessError):  # the copies are closed to anyone else
                fleet.snapshots(node, repo)

    # A Backup without the credentials is refused by every peer: it fails, saying which field to set, and
    # the peers' copies stay as they were.
    created(backup("mesh-open", {"mesh": {"replicationFactor": 2}}, schedule="0 3 1 1 *",
                   nodeSelector={"matchLabels": {"kubernetes.io/hostname": NODES[1]}}))
    fleet.cluster.wait_condition("Backup", "mesh-open", "True")
    run_now(fleet.cluster, "mesh-open", "go")
    entry = fleet.wait_entry("Backup", "mesh-open", NODES[1], lambda e: e.get("phase") in ("Succeeded", "Failed"))
    assert entry["phase"] == "Failed" and entry["failure"] == "TargetAccessDenied", entry
    assert "gives none" in entry["message"] and "spec.target.mesh.credentialsSecretRef" in entry["message"]
    assert "401" in entry["message"] and "0 of 2 target(s) written" in entry["message"]
    holders = [s for s in rest_servers.values() if (s.data / NODES[1] / "config").exists()]
    assert len(holders) == 2
    for server in holders:
        assert len(fleet.snapshots(NODES[1], f"rest:{server.url}/{NODES[1]}/", (MESH_USER, MESH_PASSWORD))) == 1

    gone = NODES[0]
    rest_servers[gone].stop()  # the server dies; its node's config still asks for it
    fleet.cluster.wait_for(lambda: advertised(fleet.cluster, gone) is None, 30,
                           what=f"{gone}'s agent to withdraw its stopped rest-server")
    condition = next(c for c in fleet.cluster.get("Node", gone)["status"]["conditions"]
                     if c["type"] == "MaculaBackupServer")
    assert condition["status"] == "False" and condition["reason"] == "NotAnswering"
    # two servers left cannot hold two copies for every node: the operator says so, naming the field
    ready = fleet.cluster.wait_condition("Backup", "mesh", "False")
    assert ready["reason"] == "NotEnoughPeers" and "only 2 node(s) offer a rest-server" in ready["message"]
