"""Agent benchmarks: idle RSS and CPU of agent processes, MeshRole change → applied on every node, for
3 agent processes and for 100 lightweight in-process agents (one thread set each, one shared client).
"Applied" is read where users read it, the MeshRole's status.nodes: the agents write their NodeReports and
the operator (a process, as in its pod) folds them in, so the figure includes the fold.

Run: .venv/bin/python benchmarks/agent.py [--runs 10] [--scale 100 (0: none)] [--baseline CHECKOUT]
Prints markdown rows for docs/benchmarks.md. Needs root (network namespaces for real nft).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config

from maculaos.agent.runner import Agent
from maculaos.agent.settings import AgentSettings
from maculaos.api import GROUP, VERSION
from maculaos.api.common import DEFAULT_NAMESPACE
from maculaos.devenv.controlplane import ControlPlane
from maculaos.devenv.demo import install_crds, start_agent, start_operator
from maculaos.devenv.netns import create_netns, delete_netns, netns_name, nft_wrapper
from maculaos.devenv.nodes import SimulatedNode, create_host_root, register_node
from maculaos.devenv.processes import ProcessRecord, stop
from maculaos.kube.rest import Credentials, KubeClient

REPO = Path(__file__).resolve().parents[1]
CREATED_NETNS: list[str] = []


def proc_stat(pid: int) -> tuple[int, float]:
    """(RSS KiB, CPU seconds so far)."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def applied_everywhere(custom: client.CustomObjectsApi, name: str, nodes: list[str], generation: int) -> bool:
    obj: Any = custom.get_cluster_custom_object(GROUP, VERSION, "meshroles", name)
    entries = (obj.get("status") or {}).get("nodes") or {}
    return all(entries.get(n, {}).get("observedGeneration") == generation and entries[n].get("phase") == "Applied"
               for n in nodes)


def change_to_applied(custom: client.CustomObjectsApi, nodes: list[str], runs: int, timeout: float) -> list[float]:
    """Toggle the bootstrap role of a MeshRole selecting every node; time until every node reports it."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MeshRole", "metadata": {"name": "bench"},
            "spec": {"roles": []}}
    custom.create_cluster_custom_object(GROUP, VERSION, "meshroles", body)
    try:
        return _toggle(custom, nodes, runs, timeout)
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "meshroles", "bench")


def _toggle(custom: client.CustomObjectsApi, nodes: list[str], runs: int, timeout: float) -> list[float]:
    samples = []
    for i in range(runs + 1):
        started = time.perf_counter()
        obj: Any = custom.patch_cluster_custom_object(
            GROUP, VERSION, "meshroles", "bench", {"spec": {"roles": ["bootstrap"] if i % 2 == 0 else []}},
            _content_type="application/merge-patch+json")
        generation = obj["metadata"]["generation"]
        while not applied_everywhere(custom, "bench", nodes, generation):
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"generation {generation} not applied on all {len(nodes)} nodes")
            time.sleep(0.05)
        if i:  # the first change also warms caches up: not counted
            samples.append(time.perf_counter() - started)
    return samples


def fleet(plane: ControlPlane, root: Path, count: int, prefix: str, netns: bool = True) -> list[tuple[str, Path, Path]]:
    core = client.CoreV1Api(kube_config.new_client_from_config(str(plane.kubeconfig)))
    nodes = []
    for i in range(count):
        sim = SimulatedNode(name=f"{prefix}-{i:03d}")
        register_node(core, sim)
        host = create_host_root(root / sim.name, sim)
        if not netns:
            nodes.append((sim.name, host, Path("true")))
            continue
        name = netns_name(root, sim.name)
        create_netns(name)
        CREATED_NETNS.append(name)
        nodes.append((sim.name, host, nft_wrapper(root / f"{sim.name}.nft", name)))
    return nodes


def quantiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"p50 {statistics.median(samples) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms"


def idle_rss_and_cpu(plane: ControlPlane, root: Path, prefix: str, code: Path | None = None,
                     lan_neighbours_seconds: float = 0) -> tuple[list[ProcessRecord], list[str], float, float]:
    """3 agent processes (from another source tree's operator/ when code is given) after they settled:
    their median idle RSS (MiB) and CPU (% of one core over 30 s)."""
    nodes = fleet(plane, root, 3, prefix)
    saved = os.environ.get("PYTHONPATH")
    if code is not None:
        os.environ["PYTHONPATH"] = str(code / "operator")
    try:
        agents = [start_agent(plane.kubeconfig, root / "logs", n, host, nft, resync_seconds=30,
                              lan_neighbours_seconds=lan_neighbours_seconds) for n, host, nft in nodes]
    finally:
        if code is not None:
            os.environ.pop("PYTHONPATH") if saved is None else os.environ.update(PYTHONPATH=saved)
    time.sleep(20)  # started, synced, first pass done
    before = [proc_stat(a.pid) for a in agents]
    time.sleep(30)
    after = [proc_stat(a.pid) for a in agents]
    rss = statistics.median(a[0] for a in after) / 1024
    cpu = statistics.median((a[1] - b[1]) / 30 * 100 for a, b in zip(after, before, strict=True))
    return agents, [n for n, _, _ in nodes], rss, cpu


def three_processes(plane: ControlPlane, root: Path, runs: int, baseline: Path | None) -> None:
    if baseline is not None:
        old, _, old_rss, old_cpu = idle_rss_and_cpu(plane, root, "base", baseline)
        for agent in old:
            stop(agent)
        print(f"| baseline ({baseline}): agent RSS at idle | {old_rss:.0f} MiB | median of 3 agents |")
        print(f"| baseline: agent CPU at idle | {old_cpu:.2f} % of one core | median of 3 agents over 30 s |")
    agents, nodes, rss, cpu = idle_rss_and_cpu(plane, root, "proc")
    try:
        ratio = f"; ratio to baseline {rss / old_rss:.2f}" if baseline is not None else ""
        print(f"| agent RSS at idle (process, 1 MeshRole, 0 HealthCheck) | {rss:.0f} MiB | median of 3 agents{ratio} |")
        print(f"| agent CPU at idle | {cpu:.2f} % of one core | median of 3 agents over 30 s |")
        custom = client.CustomObjectsApi(kube_config.new_client_from_config(str(plane.kubeconfig)))
        samples = change_to_applied(custom, nodes, runs, timeout=30)
        print(f"| MeshRole change → Applied on all 3 nodes (agent processes) | {quantiles(samples)} | {runs} changes |")
    finally:
        for agent in agents:
            stop(agent)
    # The chart's agent also looks for LAN neighbours (every 300 s; the first look at start is in the window).
    agents, _, lan_rss, lan_cpu = idle_rss_and_cpu(plane, root, "lan", lan_neighbours_seconds=300)
    for agent in agents:
        stop(agent)
    print(f"| agent RSS at idle, looking for LAN neighbours every 300 s (the chart's) | {lan_rss:.0f} MiB | "
          f"median of 3 agents; ratio to the row above {lan_rss / rss:.2f}; CPU {lan_cpu:.2f} % of one core |")


def in_process(plane: ControlPlane, root: Path, count: int, runs: int, host_tools: str) -> None:
    """host_tools "real": each agent runs nft (in its netns) and systemctl --root as a node would, all on this
    machine's cores; "noop": /bin/true stands for them, leaving only the API side (watch, select, plan,
    report), which is what grows with the fleet: on real nodes the host work runs on each node's own CPU."""
    nodes = fleet(plane, root, count, f"lite-{host_tools}", netns=host_tools == "real")
    stop_flag = threading.Event()
    agents = []
    for name, host, nft in nodes:
        tools: dict[str, Any] = ({"nft": str(nft)} if host_tools == "real"
                                 else {"nft": "true", "systemctl": "true", "live_systemd": True})
        # a client (connection pool) per agent, as each node has its own
        kube = KubeClient(Credentials.from_kubeconfig(plane.kubeconfig))
        agents.append(Agent(AgentSettings(node_name=name, host_root=host, resync_seconds=300, **tools), kube))
        threading.Thread(target=agents[-1].run, args=(stop_flag,), daemon=True).start()
    try:
        wait_until_settled(agents)
        try:
            custom = client.CustomObjectsApi(kube_config.new_client_from_config(str(plane.kubeconfig)))
            samples = change_to_applied(custom, [n for n, _, _ in nodes], runs, timeout=120)
        except TimeoutError as exc:
            print(f"| MeshRole change → Applied on all {count} nodes (in-process agents, host tools {host_tools}) "
                  f"| not within 120 s ({exc}) | — |")
            return
        print(f"| MeshRole change → Applied on all {count} nodes (in-process agents, host tools {host_tools}) "
              f"| {quantiles(samples)} | {runs} changes |")
    finally:
        stop_flag.set()


def wait_until_settled(agents: list[Agent], timeout: float = 300) -> None:
    """Until every agent has listed everything and made its first pass, plus a few quiet seconds: a fleet
    still starting up would be measured, not its response to a change."""
    deadline = time.monotonic() + timeout
    while not all(a.last_pass and all(c.synced.is_set() for c in a._caches().values()) for a in agents):
        if time.monotonic() > deadline:
            raise TimeoutError("agents did not finish starting")
        time.sleep(0.5)
    time.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--scale-only", action="store_true", help="skip the agent-process rows")
    parser.add_argument("--baseline", type=Path, help="another checkout (git worktree) whose agent's idle RSS and "
                                                      "CPU are measured first, in the same run")
    parser.add_argument("--host-tools", choices=["real", "noop", "both"], default="both",
                        help="what the in-process agents run for nft/systemctl (see in_process)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plane = ControlPlane(root / "controlplane")
        plane.start()
        operator = None
        try:
            install_crds(plane.kubeconfig, plane.bin_dir, REPO / "crds")
            core = client.CoreV1Api(kube_config.new_client_from_config(str(plane.kubeconfig)))
            core.create_namespace({"metadata": {"name": DEFAULT_NAMESPACE}})
            operator = start_operator(plane.kubeconfig, root / "logs", resync_seconds=30)
            if not args.scale_only:
                three_processes(plane, root / "proc", args.runs, args.baseline)
            for tools in (["real", "noop"] if args.scale and args.host_tools == "both" else
                          [args.host_tools] if args.scale else []):
                in_process(plane, root / f"lite-{tools}", args.scale, max(3, args.runs // 2), tools)
        finally:
            if operator is not None:
                stop(operator)
            plane.stop()
            for netns in CREATED_NETNS:
                delete_netns(netns)


if __name__ == "__main__":
    main()
