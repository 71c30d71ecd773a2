"""GitOps benchmark: a commit pushed to the node's git server, applied by Flux, and Applied by the agents of
every node its MeshRole selects; and the idle memory of Flux's two controllers.

Run: .venv/bin/python benchmarks/gitops.py [--commits 10] [--interval 10s] [--idle-seconds 30]

The parts are the tests' (tests/integration/flux.py, tests/gitserver.py, tests/integration/agent_fleet.py):
a test control plane, the operator as its own process, three simulated nodes with their real agents, the
real git server (lighttpd, git http-backend) and Flux's source- and kustomize-controller v1.9.6 as
processes, configured by the chart's GitOps objects with `gitops.interval` = --interval. Each commit flips
the warehouse MeshRole's roles, pushed at a random moment of Flux's interval, as a person's would be.
Reported per commit, and as medians: push → Flux's Kustomization has applied
the commit (Flux's part: its GitRepository interval bounds it, as no webhook receiver runs) → both warehouse
nodes report Applied at the new generation (the operator's and agents' part). Then, after --idle-seconds
without commits, each controller's VmRSS and VmHWM.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' Flux, git server and agent fleet

from baseline import rss_kib  # noqa: E402  (benchmarks/, the script's folder)

from maculaos.api.common import parse_duration  # noqa: E402
from maculaos.devenv.controlplane import default_bin_dir  # noqa: E402
from maculaos.devenv.demo import start_operator  # noqa: E402
from maculaos.devenv.processes import stop  # noqa: E402
from tests.gitserver import start_git_server  # noqa: E402
from tests.integration.agent_fleet import agent_fleet  # noqa: E402
from tests.integration.conftest import Cluster, start_cluster  # noqa: E402
from tests.integration.flux import (  # noqa: E402
    SITE,
    SiteRepository,
    age_key,
    applied_revision,
    flux_objects,
    start_flux,
)

NODES = ("macula-nuc-01", "macula-nuc-02")  # the warehouse
ROLES = (["gateway"], ["gateway", "bootstrap"])


def meshrole(roles: list[str]) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": "MeshRole", "metadata": {"name": "bench-warehouse"},
            "spec": {"nodeSelector": {"matchLabels": {"macula.io/site": "warehouse"}}, "roles": roles}}


def applied_everywhere(cluster: Cluster) -> bool:
    obj = cluster.get("MeshRole", "bench-warehouse")
    generation = obj["metadata"]["generation"]
    nodes = (obj.get("status") or {}).get("nodes") or {}
    return all(nodes.get(n, {}).get("phase") == "Applied" and nodes[n].get("observedGeneration") == generation
               for n in NODES)


def wait(predicate: Any, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=10)
    parser.add_argument("--interval", default="10s", help="the chart's gitops.interval (Flux's GitRepository)")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    bin_dir = default_bin_dir()
    with tempfile.TemporaryDirectory(prefix="maculaos-gitops-bench-") as tmp:
        work = Path(tmp)
        cluster = start_cluster(work / "controlplane", bin_dir)
        operator = start_operator(cluster.plane.kubeconfig, work / "logs", resync_seconds=30)
        git_server = start_git_server(work / "logs")
        flux = start_flux(cluster, bin_dir, work / "flux")
        try:
            with agent_fleet(cluster, work / "fleet"):
                site = SiteRepository(git_server.server, work / "clone")
                first = site.push("warehouse", meshrole(ROLES[0]))
                age_key(cluster, bin_dir, work / "age.agekey")  # the chart's objects name its Secret
                for obj in flux_objects(bin_dir, git_server.server.url, args.interval):
                    cluster.apply(obj)
                wait(lambda: applied_revision(cluster) == f"main@sha1:{first}", 120, "the first commit")
                wait(lambda: applied_everywhere(cluster), 60, "the first MeshRole on the nodes")
                rows = []
                period = parse_duration(args.interval).total_seconds()
                for i in range(1, args.commits + 1):
                    time.sleep(random.uniform(0, period))  # a person commits at any moment of Flux's interval
                    sha = site.push(f"commit {i}", meshrole(ROLES[i % 2]))
                    pushed = time.monotonic()
                    flux_done = wait(lambda s=sha: applied_revision(cluster) == f"main@sha1:{s}", 180, f"commit {i}")
                    nodes_done = wait(lambda: applied_everywhere(cluster), 60, f"commit {i} on the nodes")
                    rows.append((flux_done - pushed, nodes_done - flux_done, nodes_done - pushed))
                    print(f"commit {i:2d}: Flux applied it after {rows[-1][0]:5.1f} s, the nodes after "
                          f"{rows[-1][1]:4.1f} s more: {rows[-1][2]:5.1f} s", flush=True)
                time.sleep(args.idle_seconds)
                memory = {Path(r.log).stem: (rss_kib(r.pid), rss_kib(r.pid, "VmHWM")) for r in flux.records}
        finally:
            flux.stop()
            git_server.stop()
            stop(operator)
            cluster.plane.stop()
    flux_p50, ours_p50, total_p50 = (statistics.median(c) for c in zip(*rows, strict=True))
    print(f"\n{args.commits} commits, GitRepository interval {args.interval} (site folder ./{SITE}):")
    print(f"  push -> Flux applied: median {flux_p50:.1f} s; -> Applied on both nodes: median {ours_p50:.1f} s more; "
          f"total median {total_p50:.1f} s (Flux's share of the medians {flux_p50 / (flux_p50 + ours_p50):.0%})")
    for name, (rss, hwm) in memory.items():
        print(f"  {name}: idle VmRSS {rss / 1024:.1f} MiB, peak VmHWM {hwm / 1024:.1f} MiB")
    print(yaml.safe_dump({"rows": [[round(x, 2) for x in r] for r in rows]}, default_flow_style=True).strip())


if __name__ == "__main__":
    main()
