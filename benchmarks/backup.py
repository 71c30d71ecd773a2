"""Backup benchmarks (issue #5): 1 GiB of mixed files backed up through the operator and an agent process
vs plain restic on the same data in the same run; restore throughput; the agent's peak RSS during a backup.

Run: .venv/bin/python benchmarks/backup.py [--first-rounds 3] [--rounds 3] [--restore-rounds 3]
     [--workdir /tmp/maculaos-backup-bench]
Prints markdown rows for docs/benchmarks.md. Needs root (a network namespace for the agent's nft).
The data (about 2.5 GiB with the repositories) is written under --workdir and deleted at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes import config as kube_config

from maculaos.api import GROUP, VERSION
from maculaos.api.nodereport import NodeReportSpec, report_entries, report_key
from maculaos.devenv.controlplane import ControlPlane, default_bin_dir
from maculaos.devenv.demo import install_crds, start_agent, start_operator
from maculaos.devenv.netns import create_netns, delete_netns, netns_name, nft_wrapper
from maculaos.devenv.nodes import SimulatedNode, create_host_root, register_node
from maculaos.devenv.processes import stop
from maculaos.host.restic import Restic, local_repository
from maculaos.host.restore import SnapshotChoice, choose_snapshot, restore_snapshot

REPO = Path(__file__).resolve().parents[1]
RESTIC = str(default_bin_dir() / "restic")
PASSWORD = "benchmark"
NODE = "bench-01"
MIB = 1024 * 1024


def make_data(root: Path, seed: int = 5) -> int:
    """About 1 GiB: 16 000 small files (4-60 KiB, in 160 folders) and 8 files of 64 MiB; random bytes."""
    rng = random.Random(seed)
    total = 0
    for i in range(16000):
        folder = root / f"shop-{i % 160:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(4, 60) * 1024
        (folder / f"record-{i:05d}.dat").write_bytes(os.urandom(size))
        total += size
    for i in range(8):
        with open(root / f"video-{i}.bin", "wb") as handle:
            for _ in range(64):
                handle.write(os.urandom(MIB))
        total += 64 * MIB
    return total


def change_one_percent(root: Path, total: int, rng: random.Random) -> int:
    """Rewrite about 1% of the bytes: whole small files plus a stretch inside one large file."""
    changed = 0
    small = sorted(root.glob("shop-*/record-*.dat"))
    for path in rng.sample(small, 160):
        size = path.stat().st_size
        path.write_bytes(os.urandom(size))
        changed += size
    big = root / f"video-{rng.randrange(8)}.bin"
    stretch = max(total // 100 - changed, MIB)
    with open(big, "r+b") as handle:
        handle.seek(rng.randrange(0, 64 * MIB - stretch))
        handle.write(os.urandom(stretch))
    return changed + stretch


def plain_backup(repo: Path, cache: Path, data: Path, init: bool = False) -> float:
    """One plain `restic backup`; with init, `restic init` first, timed too (the agent's first run must
    create its repository as well)."""
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(repo)}
    started = time.perf_counter()
    if init:
        subprocess.run([RESTIC, "--no-cache", "init"], env=env, check=True, capture_output=True)
    subprocess.run([RESTIC, "--cache-dir", str(cache), "backup", "--json", "--host", NODE, str(data)], env=env,
                   check=True, capture_output=True)
    return time.perf_counter() - started


def plain_restore(repo: Path, target: Path) -> float:
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(repo)}
    started = time.perf_counter()
    subprocess.run([RESTIC, "--no-cache", "restore", "latest", "--target", str(target)], env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - started


class PeakRss:
    """Samples the agent's peak RSS (VmHWM) and the largest RSS of its restic children while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.child_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for child in _descendants(self.pid):
                self.child_peak = max(self.child_peak, _status_kib(child, "VmRSS:"))

    def agent_peak_kib(self) -> int:
        return _status_kib(self.pid, "VmHWM:")


def _descendants(pid: int) -> list[int]:
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    kids = [int(p) for p in out.split()]
    return kids + [g for k in kids for g in _descendants(k)]


def _status_kib(pid: int, key: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith(key)), 0)


class Through:
    """Backups and restores through the real path: annotate the Backup, wait for the node's report. The
    wait is a watch, not polling: polling the API server every 0.1 s loads the machine while the agent's
    restic runs, and not while plain restic does. A backup also notes when the agent's own NodeReport
    showed the result (before the operator folded it into the Backup's status): the latency of the fold."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.report_lags: list[float] = []  # per backup: seconds from the NodeReport to the folded status

    def wait(self, plural: str, name: str, done: Callable[[dict[str, Any]], bool],
             timeout: float = 1800) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_cluster_custom_object(GROUP, VERSION, plural, name)
        deadline = time.monotonic() + timeout
        while not done(obj):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{plural}/{name}: {obj.get('status')}")
            stream = watch.Watch().stream(self.custom.list_cluster_custom_object, GROUP, VERSION, plural,
                                          field_selector=f"metadata.name={name}",
                                          resource_version=obj["metadata"]["resourceVersion"], timeout_seconds=60)
            for event in stream:
                obj = event["object"]
                if done(obj):
                    break
        return obj

    def backup(self, token: str, name: str = "bench") -> tuple[float, dict[str, Any]]:
        run_id = "ondemand-" + hashlib.sha256(token.encode()).hexdigest()[:12]
        reported: list[float] = []
        watcher = threading.Thread(target=self._note_report, args=(name, run_id, reported), daemon=True)
        watcher.start()
        time.sleep(0.2)  # the watch is open before the run can start
        started = time.perf_counter()
        self.custom.patch_cluster_custom_object(GROUP, VERSION, "backups", name, {
            "metadata": {"annotations": {"os.macula.io/run-now": token}}})

        def done(obj: dict[str, Any]) -> bool:
            status = obj.get("status") or {}
            run, entry = status.get("run") or {}, _entry(obj)
            return run.get("reason") == "OnDemand" and run.get("id") == run_id and \
                entry.get("runId") == run_id and entry.get("phase") in ("Succeeded", "Failed")

        entry = _entry(self.wait("backups", name, done))
        folded = time.perf_counter()
        watcher.join(timeout=60)
        if entry["phase"] != "Succeeded":
            raise RuntimeError(f"backup through the agent failed: {entry.get('message')}")
        if reported:
            self.report_lags.append(folded - reported[0])
        return folded - started, entry

    def _note_report(self, name: str, run_id: str, reported: list[float]) -> None:
        """Appends the moment the node's NodeReport first shows this run finished."""
        for event in watch.Watch().stream(self.custom.list_cluster_custom_object, GROUP, VERSION,
                                          NodeReportSpec.resource.plural, field_selector=f"metadata.name={NODE}",
                                          timeout_seconds=1800):
            report = report_entries(event["object"]).get(report_key("Backup", name), {}).get("report", {})
            if report.get("runId") == run_id and report.get("phase") in ("Succeeded", "Failed"):
                reported.append(time.perf_counter())
                return

    def restore(self, name: str, target_dir: str) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        self.custom.create_cluster_custom_object(GROUP, VERSION, "restores", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Restore", "metadata": {"name": name},
            "spec": {"backupName": "bench", "nodeName": NODE, "snapshot": {"latest": True},
                     "paths": ["/var/lib/data"], "targetPath": target_dir}})
        entry = _entry(self.wait("restores", name, lambda o: _entry(o).get("phase") in ("Succeeded", "Failed")))
        elapsed = time.perf_counter() - started
        if entry["phase"] != "Succeeded":
            raise RuntimeError(f"restore failed: {entry}")
        return elapsed, entry


def _entry(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(((obj.get("status") or {}).get("nodes") or {}).get(NODE) or {})


def setup_cluster(plane: ControlPlane, root: Path) -> tuple[client.ApiClient, Path, Any, Any, str]:
    install_crds(plane.kubeconfig, plane.bin_dir, REPO / "crds")
    api = kube_config.new_client_from_config(str(plane.kubeconfig))
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "maculaos-system"}})
    core.create_namespaced_secret("maculaos-system", {"metadata": {"name": "bench"},
                                                      "stringData": {"password": PASSWORD}})
    sim = SimulatedNode(name=NODE)
    register_node(core, sim)
    host = create_host_root(root / NODE, sim)
    netns = netns_name(root, NODE)
    create_netns(netns)
    operator = start_operator(plane.kubeconfig, root / "logs", resync_seconds=2)
    agent = start_agent(plane.kubeconfig, root / "logs", NODE, host, nft_wrapper(root / "nft", netns),
                        resync_seconds=30)
    create_backup(api, "bench")
    return api, host, operator, agent, netns


def create_backup(api: client.ApiClient, name: str) -> None:
    """A Backup of /var/lib/data into its own local repository /var/backups/<name>, run on demand only."""
    client.CustomObjectsApi(api).create_cluster_custom_object(GROUP, VERSION, "backups", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Backup", "metadata": {"name": name},
        "spec": {"schedule": "0 3 1 1 *", "include": ["/var/lib/data"], "exclude": [],
                 "includeK3sDatastore": False, "target": {"local": {"path": f"/var/backups/{name}"}},
                 "repositoryPasswordSecretRef": {"name": "bench", "key": "password"},
                 "retention": {"keepLast": 100}}})


def first_backups(api: client.ApiClient, through: Through, host: Path, root: Path, data: Path,
                  rounds: int) -> tuple[list[float], list[float]]:
    """First backups into new repositories, each side creating its own (init timed on both). Round 0 is
    the Backup "bench" and plain-repo, which the incremental rounds go on from; later rounds use a Backup
    of their own, deleted with both repositories afterwards (1 GiB each). Who goes first alternates."""
    agent_times: list[float] = []
    plain_times: list[float] = []
    for i in range(rounds):
        name, plain_repo = ("bench", root / "plain-repo") if i == 0 else (f"bench-first-{i}", root / f"plain-{i}")
        if i:
            create_backup(api, name)
            time.sleep(3)  # the agent has seen it
        subprocess.run(["sync"], check=True)
        if i % 2 == 0:
            plain_times.append(plain_backup(plain_repo, root / "plain-cache", data, init=True))
            took, got = through.backup(f"first-{i}", name)
        else:
            took, got = through.backup(f"first-{i}", name)
            plain_times.append(plain_backup(plain_repo, root / "plain-cache", data, init=True))
        agent_times.append(took)
        print(f"  first backup {i}: agent {took:.2f} s (restic calls inside {got['durationSeconds']:.2f} s), "
              f"plain init + backup {plain_times[-1]:.2f} s")
        if i:
            client.CustomObjectsApi(api).delete_cluster_custom_object(GROUP, VERSION, "backups", name)
            shutil.rmtree(host / f"var/backups/{name}")
            shutil.rmtree(plain_repo)
    return agent_times, plain_times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--first-rounds", type=int, default=3, help="first backups, each into new repositories")
    parser.add_argument("--rounds", type=int, default=3, help="incremental rounds (1% changed each)")
    parser.add_argument("--restore-rounds", type=int, default=3, help="restores each (order rotates)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/maculaos-backup-bench"))
    args = parser.parse_args()
    root: Path = args.workdir
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    plane = ControlPlane(root / "controlplane")
    plane.start()
    netns = ""
    processes = []
    try:
        api, host, operator, agent, netns = setup_cluster(plane, root)
        processes = [operator, agent]
        data = host / "var/lib/data"
        total = make_data(data)
        subprocess.run(["sync"], check=True)
        plain_repo, plain_cache = root / "plain-repo", root / "plain-cache"
        through = Through(api)
        time.sleep(5)  # agent synced
        print(f"data: {total / MIB:.0f} MiB in {sum(1 for _ in data.rglob('*'))} entries")

        with PeakRss(agent.pid) as peak:
            agent_firsts, plain_firsts = first_backups(api, through, host, root, data, args.first_rounds)
        agent_first, plain_first = statistics.median(agent_firsts), statistics.median(plain_firsts)
        first_ratio = statistics.median(a / p for a, p in zip(agent_firsts, plain_firsts, strict=True))
        print(f"| first backup, {total / MIB:.0f} MiB, new repository (median of {args.first_rounds}) | agent "
              f"{agent_first:.1f} s | plain restic init + backup {plain_first:.1f} s | ratio {first_ratio:.2f} |")
        print(f"| agent peak RSS during the first backups | agent process {peak.agent_peak_kib() / 1024:.0f} MiB, "
              f"its restic child {peak.child_peak / 1024:.0f} MiB | | |")

        rng = random.Random(11)
        ratios, agent_times, plain_times = [], [], []
        for i in range(args.rounds):
            changed = change_one_percent(data, total, rng)
            subprocess.run(["sync"], check=True)
            if i % 2 == 0:  # alternate who goes first: the page cache favours the second
                p = plain_backup(plain_repo, plain_cache, data)
                a, entry = through.backup(f"incr-{i}")
            else:
                a, entry = through.backup(f"incr-{i}")
                p = plain_backup(plain_repo, plain_cache, data)
            agent_times.append(a)
            plain_times.append(p)
            ratios.append(a / p)
            print(f"  round {i}: {changed / MIB:.1f} MiB changed, agent {a:.2f} s (restic calls inside "
                  f"{entry['durationSeconds']:.2f} s, bytes new {entry.get('bytesNew', 0) / MIB:.1f} MiB, "
                  f"retention last {entry.get('lastRetentionTime')}, snapshots {entry.get('snapshotCount')}), "
                  f"plain {p:.2f} s; NodeReport to folded status {through.report_lags[-1]:.2f} s")
        print(f"| incremental backup, 1% changed (median of {args.rounds}) | "
              f"agent {statistics.median(agent_times):.1f} s"
              f" | plain restic {statistics.median(plain_times):.1f} s | ratio {statistics.median(ratios):.2f} |")

        print(f"| from the agent's NodeReport to the Backup's folded status (median of {len(through.report_lags)} "
              f"backups) | {statistics.median(through.report_lags) * 1000:.0f} ms | | |")

        agent_rs, plain_rs, inside, host_rs = [], [], [], []
        ours = Restic(local_repository(host / "var/backups/bench", PASSWORD), RESTIC, hostname=NODE,
                      cache_dir=host / "var/cache/maculaos/restic")
        for i in range(args.restore_rounds):  # rotate who goes first; each writes onto a settled disk
            order = ["plain", "agent", "host"][i % 3:] + ["plain", "agent", "host"][:i % 3]
            for who in order:
                subprocess.run(["sync"], check=True)
                if who == "host":  # the agent's host layer called here: is it the agent process or our code?
                    started = time.perf_counter()
                    snap = choose_snapshot(ours.snapshots(NODE, "bench"), SnapshotChoice(latest=True), "bench")
                    restore_snapshot(ours, snap, host, ["/var/lib/data"], f"/var/restore-h{i}")
                    host_rs.append(time.perf_counter() - started)
                    shutil.rmtree(host / f"var/restore-h{i}")
                elif who == "plain":
                    plain_rs.append(plain_restore(plain_repo, root / "plain-restore"))
                    shutil.rmtree(root / "plain-restore")
                else:
                    took, rentry = through.restore(f"bench-restore-{i}", f"/var/restore-{i}")
                    agent_rs.append(took)
                    inside.append(float(rentry.get("durationSeconds") or 0))
                    shutil.rmtree(host / f"var/restore-{i}")
            print(f"  restore round {i} ({', '.join(order)}): agent {agent_rs[-1]:.2f} s (inside the agent "
                  f"{inside[-1]:.2f} s), host layer in this process {host_rs[-1]:.2f} s, plain {plain_rs[-1]:.2f} s")
        agent_r, plain_r = statistics.median(agent_rs), statistics.median(plain_rs)
        print(f"| restore of {total / MIB:.0f} MiB (median of {args.restore_rounds}) | agent (Restore object, "
              f"staged + swap) {total / MIB / agent_r:.0f} MiB/s ({agent_r:.1f} s; in the agent "
              f"{statistics.median(inside):.1f} s) | plain restic restore {total / MIB / plain_r:.0f} MiB/s "
              f"({plain_r:.1f} s) | ratio {agent_r / plain_r:.2f} |")
        print(f"| restore, host layer alone (same restic calls, no agent) | {statistics.median(host_rs):.1f} s | "
              f"{plain_r:.1f} s | ratio {statistics.median(host_rs) / plain_r:.2f} |")
        print(json.dumps({"first": [agent_firsts, plain_firsts], "incremental": [agent_times, plain_times],
                          "report_to_status": through.report_lags,
                          "restore": [agent_rs, plain_rs, inside, host_rs]}))
    finally:
        for proc in processes:
            stop(proc)
        plane.stop()
        if netns:
            delete_netns(netns)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
