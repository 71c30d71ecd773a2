"""`maculaos dev up` / `dev down`: the local demo. A real control plane, simulated nodes with sandbox host
roots, the operator as a process, and examples/ applied with the real kubectl."""

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
from maculaos.devenv.demo_objects import (
    CAPPED_HEALTHCHECK,
    FIRST_BACKUP_TOKEN,
    SANDBOX_HEALTHCHECK,
    DemoReleases,
    capped_healthcheck,
    sandbox_healthcheck,
)
from maculaos.devenv.netns import create_netns, delete_netns, netns_name, nft_wrapper
from maculaos.devenv.nodes import create_host_root, demo_fleet, register_node
from maculaos.devenv.processes import ProcessRecord, free_port, is_running, load_records, save_records, spawn, stop
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


def start_agent(kubeconfig: Path, log_dir: Path, node: str, host_root: Path, nft: Path,
                resync_seconds: float = 30.0, systemctl: str = "systemctl") -> ProcessRecord:
    """One simulated node's agent as its own process, as the DaemonSet runs it (`maculaos agent run`)."""
    _, record = spawn(f"agent-{node}", [sys.executable, "-m", "maculaos", "agent", "run", f"--node-name={node}",
                                        f"--host-root={host_root}", f"--nft={nft}", f"--systemctl={systemctl}",
                                        f"--resync-seconds={resync_seconds}"], log_dir,
                      env={"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1",
                           "MACULAOS_RESTIC": str(default_bin_dir() / "restic")})
    return record


class Demo:
    """The demo environment kept in one work directory."""

    def __init__(self, workdir: Path, repo_root: Path) -> None:
        self.workdir = workdir.resolve()
        self.repo_root = repo_root
        self.state_file = self.workdir / "state.json"

    def up(self, node_count: int = 3) -> None:
        if any(is_running(r) for r in load_records(self.state_file)):
            print(f"The demo is already running (state in {self.state_file}); `maculaos dev down` stops it.")
            return
        examples = self._example_files()
        if self.workdir.exists():
            shutil.rmtree(self.workdir)  # what a stopped or failed run left: logs, a stale datastore
        plane = ControlPlane(self.workdir / "controlplane")
        started = time.monotonic()
        plane.start()
        records = list(plane.records)
        try:
            self._save(records, plane)
            print(f"control plane ready at {plane.server} in {time.monotonic() - started:.1f}s")
            install_crds(plane.kubeconfig, plane.bin_dir, self.repo_root / "crds")
            kubectl(plane.kubeconfig, plane.bin_dir, "create", "namespace", DEFAULT_NAMESPACE)  # fresh datastore
            self._register_nodes(plane.kubeconfig, node_count, records)
            operator_port = free_port()
            operator = start_operator(plane.kubeconfig, self.workdir / "logs", metrics_port=operator_port)
            records.append(operator)
            self._save(records, plane)
            restores = [p for p in examples if any(kind == "Restore" for _, kind, _ in _objects([p]))]
            first = [p for p in examples if p not in restores] + [self._write_demo_objects(plane, operator_port)]
            self._apply_and_wait(plane, first, operator)
            self._first_backup(plane, first, operator)
            self._apply_and_wait(plane, restores, operator)
            self._wait_restored(plane, restores, operator)
            self._wait_healthy(plane, node_count, operator)
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

    def releases(self) -> DemoReleases | None:
        """What the running demo's local release index serves (its state file's "releases"), or None when it
        serves none: the tour's upgrade and rollback steps need one."""
        if not self.state_file.exists():
            return None
        recorded = json.loads(self.state_file.read_text()).get("releases")
        return DemoReleases.model_validate(recorded) if recorded else None

    def _teardown(self, records: list[ProcessRecord]) -> None:
        """Stop every process, newest first, and remove the simulated nodes' network namespaces."""
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

    def _register_nodes(self, kubeconfig: Path, count: int, records: list[ProcessRecord]) -> None:
        """Register each simulated node, lay out its host root and network namespace, start its agent."""
        api = client.CoreV1Api(kube_config.new_client_from_config(str(kubeconfig)))
        for node in demo_fleet(count):
            register_node(api, node)
            host_root = create_host_root(self.workdir / "nodes" / node.name, node)
            netns = netns_name(self.workdir, node.name)
            create_netns(netns)
            nft = nft_wrapper(self.workdir / "nodes" / f"{node.name}.nft", netns)
            records.append(start_agent(kubeconfig, self.workdir / "logs", node.name, host_root, nft))
            print(f"node {node.name} registered; host root {host_root}; agent started")

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
        save_records(self.state_file, records, plane.describe())

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
  kubectl describe nodeupgrade to-0-2-0   # waits for its night window and a release index on the internet
  kubectl get events -A                # what the operator said
  tail -f {self.workdir / 'logs' / 'operator.log'}

Node sandboxes (each node's host root): {self.workdir / 'nodes'}
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
