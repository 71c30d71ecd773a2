"""`maculaos dev up` / `dev down`: the local demo. A real control plane, simulated nodes with sandbox host
roots and real RAUC, a release server on loopback, the operator as a process, and examples/ applied with
the real kubectl; then the demo's own NodeUpgrade rolls across the nodes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes import config as kube_config

from maculaos.api.common import DEFAULT_NAMESPACE
from maculaos.devenv.controlplane import ControlPlane, default_bin_dir
from maculaos.devenv.demo_disk import disk_warning
from maculaos.devenv.demo_objects import (
    CAPPED_HEALTHCHECK,
    DEMO_UPGRADE,
    FIRST_BACKUP_TOKEN,
    SANDBOX_HEALTHCHECK,
    bad_upgrade,
    capped_healthcheck,
    demo_upgrade,
    sandbox_healthcheck,
)
from maculaos.devenv.demo_release import COMPATIBLE, DemoReleases, build_releases, start_release_server
from maculaos.devenv.netns import create_netns, delete_netns, netns_name, nft_wrapper
from maculaos.devenv.nodes import create_host_root, demo_fleet, register_node
from maculaos.devenv.processes import ProcessRecord, free_port, is_running, load_records, save_records, spawn, stop
from maculaos.devenv.rauc import SimulatedRaucNode
from maculaos.errors import MaculaosError


class DemoError(MaculaosError):
    """Something the person running the demo must fix; the message says what."""


def kubectl(kubeconfig: Path, bin_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl against the demo cluster; a failure raises with kubectl's own words."""
    result = subprocess.run([str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise DemoError(f"kubectl {' '.join(args)} failed:\n{result.stderr.strip() or result.stdout.strip()}")
    return result


def install_crds(kubeconfig: Path, bin_dir: Path, crd_dir: Path) -> None:
    kubectl(kubeconfig, bin_dir, "apply", "--server-side", "-f", str(crd_dir))
    kubectl(kubeconfig, bin_dir, "wait", "--for=condition=Established", "--timeout=60s", "crd",
            "-l", "app.kubernetes.io/part-of=maculaos")


def start_operator(kubeconfig: Path, log_dir: Path, resync_seconds: float = 10.0,
                   name: str = "operator", extra_args: tuple[str, ...] = (),
                   metrics_port: int | None = None) -> ProcessRecord:
    """The operator as its own process, exactly as the container runs it (`maculaos operator run`). Its
    /metrics, /healthz and /readyz listen on loopback, on metrics_port or a free port (several operators,
    of several demos or test runs, share the machine)."""
    port = metrics_port or free_port()
    _, record = spawn(name, [sys.executable, "-m", "maculaos", "operator", "run",
                             f"--resync-seconds={resync_seconds}", f"--metrics-port=127.0.0.1:{port}",
                             *extra_args], log_dir,
                      env={"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"})
    return record


def agent_command(kubeconfig: Path, node: str, host_root: Path, nft: Path, resync_seconds: float = 30.0,
                  systemctl: str = "systemctl", lan_neighbours_seconds: float = 0) -> tuple[list[str], dict[str, str]]:
    """argv and environment of one simulated node's agent, as the DaemonSet runs it (`maculaos agent run`)."""
    argv = [sys.executable, "-m", "maculaos", "agent", "run", f"--node-name={node}", f"--host-root={host_root}",
            f"--nft={nft}", f"--systemctl={systemctl}", f"--resync-seconds={resync_seconds}",
            f"--lan-neighbours-seconds={lan_neighbours_seconds}"]
    env = {"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1",
           "MACULAOS_RESTIC": str(default_bin_dir() / "restic")}
    return argv, env


def start_agent(kubeconfig: Path, log_dir: Path, node: str, host_root: Path, nft: Path,
                resync_seconds: float = 30.0, systemctl: str = "systemctl",
                lan_neighbours_seconds: float = 0) -> ProcessRecord:
    """One simulated node's agent as its own process (a node without RAUC)."""
    argv, env = agent_command(kubeconfig, node, host_root, nft, resync_seconds, systemctl, lan_neighbours_seconds)
    _, record = spawn(f"agent-{node}", argv, log_dir, env=env)
    return record


class Demo:
    """The demo environment kept in one work directory."""

    def __init__(self, workdir: Path, repo_root: Path, health_check_wait: str = "10s",
                 delay_between_nodes: str = "5s", resync_seconds: float = 10.0) -> None:
        """health_check_wait, delay_between_nodes: the pace of the demo's NodeUpgrades; resync_seconds: the
        operator's (its timers, such as healthCheckWait, are looked at on each resync)."""
        self.workdir = workdir.resolve()
        self.repo_root = repo_root
        self.state_file = self.workdir / "state.json"
        self.upgrade_timings = {"health_check_wait": health_check_wait, "delay_between_nodes": delay_between_nodes}
        self._release_index = ""
        self.resync_seconds = resync_seconds

    def up(self, node_count: int = 3) -> None:
        if any(is_running(r) for r in load_records(self.state_file)):
            print(f"The demo is already running (state in {self.state_file}); `maculaos dev down` stops it.")
            return
        examples = self._example_files()
        if self.workdir.exists():
            shutil.rmtree(self.workdir)  # what a stopped or failed run left: logs, a stale datastore
        warning = disk_warning(self.workdir)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        plane = ControlPlane(self.workdir / "controlplane")
        started = time.monotonic()
        plane.start()
        records = list(plane.records)
        try:
            self._save(records, plane)
            print(f"control plane ready at {plane.server} in {time.monotonic() - started:.1f}s")
            install_crds(plane.kubeconfig, plane.bin_dir, self.repo_root / "crds")
            kubectl(plane.kubeconfig, plane.bin_dir, "create", "namespace", DEFAULT_NAMESPACE)  # fresh datastore
            releases = self._start_releases(records)
            self._save(records, plane)
            self._register_nodes(plane.kubeconfig, node_count, records, releases)
            operator_port = free_port()
            operator = start_operator(plane.kubeconfig, self.workdir / "logs", self.resync_seconds,
                                      metrics_port=operator_port)
            records.append(operator)
            self._save(records, plane)
            restores = [p for p in examples if any(kind == "Restore" for _, kind, _ in _objects([p]))]
            upgrades = [p for p in examples if any(kind == "NodeUpgrade" for _, kind, _ in _objects([p]))]
            self._check_only(plane, upgrades)
            first = [p for p in examples if p not in restores + upgrades]
            first.append(self._write_demo_objects(plane, operator_port))
            self._apply_and_wait(plane, first, operator)
            self._first_backup(plane, first, operator)
            self._apply_and_wait(plane, restores, operator)
            self._wait_restored(plane, restores, operator)
            self._wait_healthy(plane, node_count, operator)
            self.apply_upgrade(plane, operator)
        except BaseException:
            self._teardown(records)
            raise
        self._print_next_steps(plane, node_count)

    def down(self, keep: bool = False) -> None:
        records = load_records(self.state_file)
        self._teardown(records)
        if not keep and self.workdir.exists():
            shutil.rmtree(self.workdir)
        print(f"stopped {len(records)} process(es)" + ("" if keep else f"; removed {self.workdir}"))

    def control_plane(self) -> ControlPlane:
        """The running demo's control plane, from its state file, for commands that act on it (join-token)."""
        records = load_records(self.state_file)
        if not any(r.name == "kube-apiserver" and is_running(r) for r in records):
            raise DemoError(f"no demo control plane runs in {self.workdir}: start one with `maculaos dev up`")
        state = json.loads(self.state_file.read_text())
        return ControlPlane(self.workdir / "controlplane", api_port=int(state["api_port"]),
                            advertise_address=str(state["advertise_address"]))

    def apply_upgrade(self, plane: ControlPlane | None = None, operator: ProcessRecord | None = None) -> str:
        """Apply the demo's NodeUpgrade to 0.2.0 (no window: it starts at once) and wait until the operator
        accepts it; the rollout goes on by itself. Returns its name."""
        return self._apply_upgrade(plane, operator, demo_upgrade(self.release_index(), **self._timings()))

    def apply_bad_upgrade(self, plane: ControlPlane | None = None, operator: ProcessRecord | None = None) -> str:
        """Apply the NodeUpgrade to the bad 0.3.0 build (beta): its first node panics, boots back into its
        old slot, and the rollout stops. Meant for after the 0.2.0 rollout has ended. Returns its name."""
        return self._apply_upgrade(plane, operator, bad_upgrade(self.release_index(), **self._timings()))

    def release_index(self) -> str:
        """The URL of the demo's release index (from the state file when another process started the demo)."""
        if not self._release_index and self.state_file.exists():
            self._release_index = str(json.loads(self.state_file.read_text()).get("release_index", ""))
        if not self._release_index:
            raise DemoError(f"no demo release server runs in {self.workdir}: start one with `maculaos dev up`")
        return self._release_index

    def _timings(self) -> dict[str, str]:
        """The pace `dev up` was given (its state file), so that a later command (the tour) keeps it."""
        if self.state_file.exists():
            return dict(json.loads(self.state_file.read_text()).get("upgrade_timings") or self.upgrade_timings)
        return self.upgrade_timings

    def _apply_upgrade(self, plane: ControlPlane | None, operator: ProcessRecord | None,
                       obj: dict[str, Any]) -> str:
        plane = plane or self.control_plane()
        operator = operator or next(r for r in load_records(self.state_file) if r.name == "operator")
        path = self.workdir / f"{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        self._apply_and_wait(plane, [path], operator)
        return str(obj["metadata"]["name"])

    def _start_releases(self, records: list[ProcessRecord]) -> DemoReleases:
        """Sign the demo's bundles, write the release index and serve both on loopback."""
        releases = build_releases(self.workdir / "releases", free_port())
        records.append(start_release_server(releases, self.workdir / "logs"))
        self._release_index = releases.index_url
        print(f"release server: {releases.index_url} (0.2.0 on stable; 0.3.0 on beta, a bad build)")
        return releases

    def _check_only(self, plane: ControlPlane, paths: list[Path]) -> None:
        """Send examples the demo does not apply to the API server as a dry run: they stay valid."""
        for path in paths:
            kubectl(plane.kubeconfig, plane.bin_dir, "apply", "--dry-run=server", "-f", str(path))
            for _, kind, name in _objects([path]):
                print(f"{kind.lower()}/{name} from {path.name} accepted (server dry run, not applied: it waits "
                      "for a night window and a release index on the internet)")

    def _teardown(self, records: list[ProcessRecord]) -> None:
        """Power the RAUC nodes off (their agents, restarted by each reboot, are theirs to stop), stop every
        other process, newest first, and remove the simulated nodes' network namespaces."""
        for layout in sorted((self.workdir / "rauc").glob("*/node.json")):
            SimulatedRaucNode.load(layout.parent).shutdown()
        for record in reversed(records):
            stop(record)
        for record in records:
            if record.name.startswith("agent-"):
                delete_netns(netns_name(self.workdir, record.name.removeprefix("agent-")))

    def _example_files(self) -> list[Path]:
        """examples/*.yaml, each checked to parse before anything starts: a broken example fails loudly."""
        files = sorted((self.repo_root / "examples").glob("*.yaml"))
        if not files:
            raise DemoError(f"no examples in {self.repo_root / 'examples'}")
        for path in files:
            try:
                docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            except yaml.YAMLError as exc:
                raise DemoError(f"{path} is not valid YAML: {exc}") from exc
            if not docs or not all(isinstance(d, dict) and "kind" in d for d in docs):
                raise DemoError(f"{path} must hold Kubernetes objects (each with a kind)")
        return files

    def _register_nodes(self, kubeconfig: Path, count: int, records: list[ProcessRecord],
                        releases: DemoReleases) -> None:
        """Register each simulated node, lay out its host root, its RAUC (slots, bootloader, service) and
        network namespace, start its agent with the node's rauc and reboot hook."""
        api = client.CoreV1Api(kube_config.new_client_from_config(str(kubeconfig)))
        for node in demo_fleet(count):
            register_node(api, node)
            host_root = self.workdir / "nodes" / node.name
            rauc = SimulatedRaucNode(self.workdir / "rauc" / node.name, node.name, COMPATIBLE, releases.cert,
                                     version=node.version, host_root=host_root).create()
            create_host_root(host_root, node)
            rauc.boot()
            rauc.start_rauc()
            netns = netns_name(self.workdir, node.name)
            create_netns(netns)
            nft = nft_wrapper(self.workdir / "nodes" / f"{node.name}.nft", netns)
            argv, env = agent_command(kubeconfig, node.name, host_root, nft)
            records.append(rauc.start_agent([*argv, f"--rauc={rauc.rauc_command}",
                                             f"--reboot-command={rauc.reboot_hook}"], env))
            print(f"node {node.name} registered; host root {host_root}; RAUC {node.version} in slot "
                  f"{rauc.booted()}; agent started")

    def _write_demo_objects(self, plane: ControlPlane, operator_port: int) -> Path:
        """The demo's own HealthChecks, in a file the person can read and apply again."""
        path = self.workdir / "demo-healthchecks.yaml"
        docs = [sandbox_healthcheck(plane.api_port, operator_port), capped_healthcheck()]
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return path

    def _apply_and_wait(self, plane: ControlPlane, paths: list[Path], operator: ProcessRecord,
                        timeout: float = 60.0) -> None:
        """Apply the files, then wait for each MaculaOS object's Ready condition."""
        for path in paths:
            kubectl(plane.kubeconfig, plane.bin_dir, "apply", "-f", str(path))
        for path, kind, name in _objects(paths):
            ref = f"{kind.lower()}/{name}"
            got = self._wait_for(plane, operator, ref, _ready, f"{ref} from {path.name} to become Ready", timeout)
            print(f"{ref} Ready: {got}")

    def _first_backup(self, plane: ControlPlane, paths: list[Path], operator: ProcessRecord,
                      timeout: float = 180.0) -> None:
        """Run every Backup once now (its run-now annotation), so that restores have a snapshot."""
        for _, kind, name in _objects(paths):
            if kind != "Backup":
                continue
            kubectl(plane.kubeconfig, plane.bin_dir, "annotate", "--overwrite", f"backup/{name}",
                    f"os.macula.io/run-now={FIRST_BACKUP_TOKEN}")
            status = self._wait_for(plane, operator, f"backup/{name}", _completed_run,
                                    f"backup/{name}'s first run to complete", timeout)
            failed = {n: e.get("lastError") or e.get("message") for n, e in (status.get("nodes") or {}).items()
                      if e.get("phase") != "Succeeded"}
            if failed:
                raise DemoError(f"backup/{name}'s first run failed on {failed}")
            print(f"backup/{name}: first snapshot taken on {len(status.get('nodes') or {})} node(s)")

    def _wait_restored(self, plane: ControlPlane, paths: list[Path], operator: ProcessRecord,
                       timeout: float = 120.0) -> None:
        """Wait for each Restore to end; one that fails stops the demo with the nodes' messages."""
        for _, _kind, name in _objects(paths):
            status = self._wait_for(plane, operator, f"restore/{name}", _finished, f"restore/{name} to finish",
                                    timeout)
            if status.get("phase") != "Succeeded":
                raise DemoError(f"restore/{name} ended {status.get('phase')}: {status.get('nodes')}")
            print(f"restore/{name}: Succeeded (snapshot {status.get('snapshotId') or 'per node'})")

    def _wait_healthy(self, plane: ControlPlane, node_count: int, operator: ProcessRecord,
                      timeout: float = 90.0) -> None:
        """Wait for the demo's passing HealthCheck to find every node healthy."""
        ref = f"healthcheck/{SANDBOX_HEALTHCHECK}"
        self._wait_for(plane, operator, ref, lambda obj: obj.get("status", {}).get("healthyNodes") == node_count,
                       f"{ref} to find all {node_count} nodes healthy", timeout)
        print(f"{ref}: {node_count} of {node_count} nodes healthy")

    def _get(self, plane: ControlPlane, ref: str) -> dict[str, Any]:
        got = kubectl(plane.kubeconfig, plane.bin_dir, "get", ref, "-o", "json", check=False)
        return dict(json.loads(got.stdout)) if got.returncode == 0 else {}

    def _wait_for(self, plane: ControlPlane, operator: ProcessRecord, ref: str, probe: Callable[[dict[str, Any]], Any],
                  what: str, timeout: float) -> Any:
        """Read the object until probe finds something true in it; fail at once if the operator dies."""
        deadline = time.monotonic() + timeout
        while not (got := probe(self._get(plane, ref))):
            if not is_running(operator):
                raise DemoError(f"the operator stopped; see {operator.log}")
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.5)
        return got

    def _save(self, records: list[ProcessRecord], plane: ControlPlane) -> None:
        save_records(self.state_file, records, {**plane.describe(), "release_index": self._release_index,
                                                "upgrade_timings": self.upgrade_timings})

    def _print_next_steps(self, plane: ControlPlane, node_count: int) -> None:
        kubectl_bin = plane.bin_dir / "kubectl"
        env_line = f"export KUBECONFIG={plane.kubeconfig} PATH={plane.bin_dir}:$PATH"
        print(f"""
MaculaOS demo is running: {node_count} simulated nodes with their agents, the operator, and the examples.

  {env_line}
  kubectl get maculaos                 # every MaculaOS object and whether it is Ready
  kubectl get nodes --show-labels      # the simulated fleet
  kubectl get meshrole warehouse-gateways -o yaml   # status.nodes: what each node's agent did
  kubectl get backup nightly -o yaml   # the first backup, taken at start (run-now): a snapshot per node
  kubectl get restore nuc-02-config-preview   # Succeeded: that snapshot restored into a side directory
  kubectl get healthcheck -o wide      # {SANDBOX_HEALTHCHECK}: tcp/http/process/disk checks, all nodes healthy;
                                       # {CAPPED_HEALTHCHECK}: fails on purpose, restarts capped at 2;
                                       # edge-basics (examples/): systemd checks, which need real nodes
  kubectl get healthcheck {CAPPED_HEALTHCHECK} -o jsonpath='{{.status.nodes.*.checks.*.history}}'
  kubectl get nodeupgrades -w          # {DEMO_UPGRADE}: 0.1.0 -> 0.2.0, one node at a time, until Succeeded
  kubectl get nodeupgrade {DEMO_UPGRADE} -o jsonpath='{{.status.nodes}}'   # each node's fromVersion and slot
                                       # (examples/nodeupgrade.yaml, the same rollout at night from the
                                       # internet, is checked by the API server but not applied)
  kubectl get events -A                # what the operator said
  tail -f {self.workdir / 'logs' / 'operator.log'}

Node sandboxes (each node's host root): {self.workdir / 'nodes'}; RAUC, reboots, agent logs: {self.workdir / 'rauc'}
Release index (signed bundles): {self._release_index}
Walk through the stories, each a real action: maculaos dev tour   (--list, --step NAME, --pause)
Join a MaculaOS VM (QEMU user networking): maculaos dev join-token   (its config.yaml section)
Stop everything: make demo-stop   (or: maculaos dev down)
(kubectl is {kubectl_bin})""")



def _objects(paths: list[Path]) -> Iterator[tuple[Path, str, str]]:
    """(file, kind, name) of each MaculaOS object in the files."""
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and str(doc.get("apiVersion", "")).startswith("os.macula.io/"):
                yield path, str(doc["kind"]), str(doc["metadata"]["name"])


def _ready(obj: dict[str, Any]) -> str | None:
    """The Ready condition's message once it is True."""
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") == "True":
            return str(cond.get("message") or "ready")
    return None


def _completed_run(obj: dict[str, Any]) -> dict[str, Any] | None:
    """A Backup's status once its current run is complete."""
    status: dict[str, Any] = obj.get("status") or {}
    run = status.get("run") or {}
    return status if run.get("reason") == "OnDemand" and run.get("completionTime") else None


def _finished(obj: dict[str, Any]) -> dict[str, Any] | None:
    status: dict[str, Any] = obj.get("status") or {}
    return status if status.get("phase") in ("Succeeded", "Failed") else None
