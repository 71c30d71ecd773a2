"""The operator's RSS with a large fleet: N simulated Nodes, each with a NodeReport kept by an agent, one
MeshRole on every node; the operator (a process, as in its pod) folds the N reports into status.nodes.

Run: .venv/bin/python benchmarks/operator_fleet.py [--nodes 1000] [--agents simulated|in-process]
         [--changes 3] [--baseline REF]

--agents in-process: the agents of benchmarks/agent.py (one thread set and client each, host tools stubbed
with /bin/true); simulated: the agents' Reporter alone (one per node, one shared client), writing Applied
for each MeshRole generation, as an agent does after applying it: the operator sees the same Nodes and
NodeReports at a fraction of the benchmark's own CPU, which a 2-core machine needs at 1000 nodes.

Per operator: RSS with the fleet at idle (median of 10 samples 1 s apart, once every report is folded),
then its peak over --changes MeshRole changes (sampled every 0.5 s, and VmHWM), and the change → Applied
time on all nodes. With --baseline, REF's operator is measured first (--this-first: last), then this
checkout's, on one fleet.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from baseline import export_operator, rss_kib, run_operator, wait_leading

from maculaos.agent.nodereport import Reporter
from maculaos.agent.runner import Agent, AgentSettings
from maculaos.api import GROUP, VERSION
from maculaos.api.common import DEFAULT_NAMESPACE
from maculaos.devenv.controlplane import ControlPlane
from maculaos.devenv.demo import install_crds
from maculaos.devenv.nodes import SimulatedNode, create_host_root, node_status
from maculaos.devenv.processes import ProcessRecord, stop
from maculaos.kube.rest import ApiError, Credentials, KubeClient, resource_path

REPO = Path(__file__).resolve().parents[1]
MESHROLE = resource_path(f"{GROUP}/{VERSION}", "meshroles", "fleet")


def register(kube: KubeClient, name: str) -> None:
    """A Ready Node, as devenv.nodes.register_node makes it (through our own client: no generated one)."""
    node = SimulatedNode(name=name)
    try:
        kube.create(resource_path("v1", "nodes"), {"apiVersion": "v1", "kind": "Node",
                                                   "metadata": {"name": name, "labels": node.labels}})
    except ApiError as exc:
        if exc.status != 409:
            raise
    kube.patch(resource_path("v1", "nodes", name, subresource="status"), {"status": node_status(node, True)})


class SimulatedAgents:
    """One Reporter per node: on each MeshRole generation, every node reports it Applied."""

    def __init__(self, kube: KubeClient, nodes: list[str]) -> None:
        self.kube, self.nodes = kube, nodes
        self.meshrole: dict[str, Any] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self.reporters = [Reporter(kube, n, self._lookup) for n in nodes]
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(8)

    def _lookup(self, plural: str, name: str) -> dict[str, Any] | None:
        """The MeshRole as last read; a Node (its NodeReport's owner) read once."""
        if plural == "nodes":
            if name not in self._nodes:
                self._nodes[name] = self.kube.get(resource_path("v1", "nodes", name))
            return self._nodes[name]
        return self.meshrole if (plural, name) == ("meshroles", "fleet") and self.meshrole else None

    def start(self) -> SimulatedAgents:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        seen = None
        while not self._stop.wait(0.5):
            try:
                self.meshrole = self.kube.get(MESHROLE)
            except ApiError:
                continue
            generation = self.meshrole["metadata"]["generation"]
            if generation == seen:
                continue
            seen = generation
            entry = {"phase": "Applied", "message": "simulated", "observedGeneration": generation}
            list(self._pool.map(lambda r, entry=entry: r.node_entry("meshroles", "fleet", entry), self.reporters))

    def stop(self) -> None:
        self._stop.set()


def in_process_agents(kubeconfig: Path, root: Path, nodes: list[str], stop_flag: threading.Event) -> list[Agent]:
    """benchmarks/agent.py's in-process agents, host tools stubbed."""
    agents = []
    for name in nodes:
        host = create_host_root(root / name, SimulatedNode(name=name))
        kube = KubeClient(Credentials.from_kubeconfig(kubeconfig))
        agents.append(Agent(AgentSettings(node_name=name, host_root=host, resync_seconds=300, nft="true",
                                          systemctl="true", live_systemd=True), kube))
        threading.Thread(target=agents[-1].run, args=(stop_flag,), daemon=True).start()
    return agents


def applied(kube: KubeClient, nodes: list[str]) -> bool:
    obj = kube.get(MESHROLE)
    generation = obj["metadata"]["generation"]
    entries = (obj.get("status") or {}).get("nodes") or {}
    return all((entries.get(n) or {}).get("observedGeneration") == generation and entries[n].get("phase") == "Applied"
               for n in nodes)


def wait_applied(kube: KubeClient, nodes: list[str], operator: ProcessRecord, timeout: float) -> int:
    """Until every node's entry shows the current generation Applied; returns the peak RSS meanwhile (KiB)."""
    started, peak = time.monotonic(), 0
    while True:
        peak = max(peak, rss_kib(operator.pid))
        if applied(kube, nodes):
            return peak
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not Applied on all {len(nodes)} nodes within {timeout} s")
        time.sleep(0.5)


def measure(kube: KubeClient, kubeconfig: Path, logs: Path, name: str, code: Path | None, nodes: list[str],
            changes: int, timeout: float) -> dict[str, float]:
    operator = run_operator(kubeconfig, logs, name, 30, code)
    try:
        wait_leading(operator)
        started = time.monotonic()
        wait_applied(kube, nodes, operator, timeout)
        first_fold = time.monotonic() - started
        time.sleep(10)
        idle = statistics.median(_samples(operator, 10))
        peak, times = 0, []
        for i in range(changes):
            begun = time.monotonic()
            kube.patch(MESHROLE, {"spec": {"roles": ["bootstrap"] if i % 2 == 0 else []}})
            peak = max(peak, wait_applied(kube, nodes, operator, timeout))
            times.append(time.monotonic() - begun)
        return {"idle": idle / 1024, "peak": max(peak, rss_kib(operator.pid, "VmHWM")) / 1024,
                "change": statistics.median(times), "first_fold": first_fold}
    finally:
        stop(operator)


def _samples(operator: ProcessRecord, count: int) -> list[int]:
    samples = []
    for _ in range(count):
        samples.append(rss_kib(operator.pid))
        time.sleep(1)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--agents", choices=["simulated", "in-process"], default="simulated")
    parser.add_argument("--changes", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--baseline", default="", help="git ref whose operator is measured too, same fleet")
    parser.add_argument("--this-first", action="store_true", help="measure this checkout before the baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plane = ControlPlane(root / "controlplane")
        plane.start()
        stop_flag = threading.Event()
        simulated = None
        try:
            install_crds(plane.kubeconfig, plane.bin_dir, REPO / "crds")
            kube = KubeClient(Credentials.from_kubeconfig(plane.kubeconfig), connections=16)
            kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": DEFAULT_NAMESPACE}})
            nodes = [f"fleet-{i:04d}" for i in range(args.nodes)]
            started = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda n: register(kube, n), nodes))
            kube.create(resource_path(f"{GROUP}/{VERSION}", "meshroles"),
                        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MeshRole", "metadata": {"name": "fleet"},
                         "spec": {"roles": []}})
            if args.agents == "simulated":
                simulated = SimulatedAgents(kube, nodes).start()
            else:
                in_process_agents(plane.kubeconfig, root / "nodes", nodes, stop_flag)
            print(f"{args.nodes} nodes registered, agents ({args.agents}) started in "
                  f"{time.monotonic() - started:.0f} s", flush=True)
            variants: list[tuple[str, Path | None]] = [("this", None)]
            if args.baseline:
                variants.insert(len(variants) if args.this_first else 0,
                                (f"baseline {args.baseline}", export_operator(args.baseline, root / "baseline")))
            results = {}
            for label, code in variants:
                results[label] = measure(kube, plane.kubeconfig, root / "logs", f"operator-{label.split()[0]}",
                                         code, nodes, args.changes, args.timeout)
                print(f"{label}: " + ", ".join(f"{k} {v:.1f}" for k, v in results[label].items()), flush=True)
        finally:
            stop_flag.set()
            if simulated is not None:
                simulated.stop()
            plane.stop()
    base = results.get(f"baseline {args.baseline}") if args.baseline else None
    what = f"{args.nodes} nodes, {args.agents} agents"
    for key, label, unit in (("idle", f"operator RSS at idle, {what}", "MiB"),
                             ("peak", f"operator RSS peak over {args.changes} MeshRole changes, {what}", "MiB"),
                             ("change", f"MeshRole change → Applied on all {args.nodes} nodes (median)", "s")):
        row = f"| {label} | {results['this'][key]:.{0 if unit == 'MiB' else 1}f} {unit}"
        if base is not None:
            row += (f" | baseline {args.baseline}: {base[key]:.{0 if unit == 'MiB' else 1}f} {unit} "
                    f"(ratio {results['this'][key] / base[key]:.2f})")
        print(row + " |")


if __name__ == "__main__":
    main()
