"""NodeUpgrade rollout benchmark: 50 simulated nodes, maxUnavailable 5, the operator as its own process.

Run: .venv/bin/python benchmarks/upgrade_rollout.py [--nodes 50] [--max-unavailable 5] [--runs 1]
         [--baseline REF]

With --baseline, each run is done twice on the same control plane, alternating: once by the operator of
REF (its `operator/` exported with `git archive` and put first on PYTHONPATH) and once by this checkout's,
so the two are compared under the same load.

The node side is played by the STAND-IN AGENTS of the integration tests (tests/integration/upgrade_agents.py;
each "reboot" takes --reboot-seconds): 50 real nodes (an agent process, a `rauc service` and its bus each)
would measure this machine rather than the operator. Reports, per run: wall time
from `kubectl apply` to phase Succeeded; the API requests the operator's client made during the rollout
(its own counter, logged at each phase change; kopf's watch connections and the leader-election renewals
are not in it); operator RSS at idle (same run, before the rollout: the baseline) and its peak during the
rollout; the most nodes disrupted at once, sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes import config as kube_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for the stand-in agents, which live with the tests

from baseline import export_operator, rss_kib, run_operator  # noqa: E402  (benchmarks/, the script's folder)

from maculaos.api.common import DEFAULT_NAMESPACE  # noqa: E402
from maculaos.devenv.controlplane import ControlPlane  # noqa: E402
from maculaos.devenv.demo import install_crds, start_operator  # noqa: E402
from maculaos.devenv.processes import ProcessRecord, stop  # noqa: E402
from tests.integration.upgrade_agents import Sampler, StandInAgents, simulated_fleet  # noqa: E402

REQUESTS = re.compile(r"phase (\S+) -> (\S+):.*\[(\d+) API requests since the operator started\]")


def phase_counts(log: Path, name: str) -> dict[str, int]:
    """API request count at each phase change of one NodeUpgrade, from the operator's log."""
    counts = {}
    for line in log.read_text().splitlines():
        if f"NodeUpgrade {name}: phase" in line and (match := REQUESTS.search(line)):
            counts[match.group(2)] = int(match.group(3))
    return counts


def one_run(plane: ControlPlane, api: client.ApiClient, operator: ProcessRecord, args: argparse.Namespace,
            run: int, variant: str = "") -> dict[str, float]:
    name = f"bench-{variant}{run}"
    with simulated_fleet(api, name, args.nodes) as nodes:
        idle_rss = rss_kib(operator.pid)
        agents = StandInAgents(api, name, nodes, reboot_seconds=args.reboot_seconds).start()
        sampler = Sampler(api, name, nodes).start()
        peak_rss = idle_rss
        spec = {"version": "0.2.0", "source": {"localPath": "/var/lib/maculaos/bundles"},
                "nodeSelector": {"matchLabels": {"upgrade-test": name}}, "healthCheckWait": "1s",
                "strategy": {"maxUnavailable": args.max_unavailable}}
        obj = {"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeUpgrade", "metadata": {"name": name},
               "spec": spec}
        kubectl = [str(plane.bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}"]
        custom = client.CustomObjectsApi(api)
        started = time.perf_counter()
        subprocess.run([*kubectl, "apply", "-f", "-"], input=yaml.safe_dump(obj), text=True, check=True,
                       capture_output=True)
        while True:
            status = custom.get_cluster_custom_object("os.macula.io", "v1alpha1", "nodeupgrades", name).get(
                "status", {})
            peak_rss = max(peak_rss, rss_kib(operator.pid))
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            if time.perf_counter() - started > args.timeout:
                raise TimeoutError(f"rollout not done after {args.timeout} s: {status.get('phase')}")
            time.sleep(0.1)
        wall = time.perf_counter() - started
        agents.stop()
        sampler.stop()
        if status["phase"] != "Succeeded" or agents.errors:
            raise RuntimeError(f"rollout ended {status['phase']}: {agents.errors[:3]}")
        time.sleep(1)  # let the log line of the last phase change land
        counts = phase_counts(Path(operator.log), name)
        requests = counts.get("Succeeded", 0) - min(counts.values(), default=0)
        subprocess.run([*kubectl, "delete", "nodeupgrade", name], check=True, capture_output=True)
        return {"wall": wall, "requests": requests, "idle_rss": idle_rss / 1024, "peak_rss": peak_rss / 1024,
                "peak_disrupted": sampler.peak, "reboots": sum(s.boots_into_new for s in agents.states.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--max-unavailable", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--reboot-seconds", type=float, default=0.5)
    parser.add_argument("--resync-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--baseline", default="", help="git ref whose operator runs each rollout too")
    args = parser.parse_args()
    if args.baseline:
        compare(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        plane = ControlPlane(Path(tmp) / "controlplane")
        plane.start()
        operator = None
        try:
            install_crds(plane.kubeconfig, plane.bin_dir, REPO / "crds")
            api = kube_config.new_client_from_config(str(plane.kubeconfig))
            client.CoreV1Api(api).create_namespace({"metadata": {"name": DEFAULT_NAMESPACE}})
            operator = start_operator(plane.kubeconfig, Path(tmp) / "logs", resync_seconds=args.resync_seconds)
            time.sleep(20)  # leader election, kopf start, first resync: idle
            results = [one_run(plane, api, operator, args, run) for run in range(args.runs)]
        finally:
            if operator is not None:
                stop(operator)
            plane.stop()
    report(results, args)


def compare(args: argparse.Namespace) -> None:
    """Baseline and this checkout, alternating on one control plane; a fresh operator for each rollout."""
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory() as tmp:
        baseline = export_operator(args.baseline, Path(tmp) / "baseline")
        plane = ControlPlane(Path(tmp) / "controlplane")
        plane.start()
        try:
            install_crds(plane.kubeconfig, plane.bin_dir, REPO / "crds")
            api = kube_config.new_client_from_config(str(plane.kubeconfig))
            client.CoreV1Api(api).create_namespace({"metadata": {"name": DEFAULT_NAMESPACE}})
            for run in range(args.runs):
                for variant, path in (("baseline", baseline), ("this", None)):
                    operator = run_operator(plane.kubeconfig, Path(tmp) / "logs", f"operator-{variant}-{run}",
                                            args.resync_seconds, path)
                    try:
                        time.sleep(25)  # the previous leader's Lease runs out; kopf start, first resync: idle
                        results[variant].append(one_run(plane, api, operator, args, run, variant))
                    finally:
                        stop(operator)
                    print(f"{variant} run {run}: " + ", ".join(f"{k} {v:.1f}" for k, v in results[variant][-1].items()),
                          flush=True)
        finally:
            plane.stop()
    med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in results.items()}
    print(f"| what (median of {args.runs}) | baseline {args.baseline} | this checkout | ratio |\n"
          "| --- | --- | --- | --- |")
    for key, label in (("wall", "wall time, apply → Succeeded (s)"), ("requests", "API requests by the operator"),
                       ("peak_rss", "operator RSS peak (MiB)"), ("peak_disrupted", "most nodes disrupted at once"),
                       ("reboots", "reboots into the new slot")):
        a, b = med["baseline"][key], med["this"][key]
        print(f"| {label} | {a:.0f} | {b:.0f} | {b / a if a else float('nan'):.2f} |")


def report(results: list[dict[str, float]], args: argparse.Namespace) -> None:
    for run, r in enumerate(results):
        print(f"run {run}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    med["idle_rss"] = results[0]["idle_rss"]  # later runs start after a rollout: not idle any more
    waves = -(-args.nodes // args.max_unavailable)
    print(f"| what | figure (median of {args.runs}) |\n| --- | --- |")
    print(f"| wall time, apply → Succeeded, {args.nodes} nodes, maxUnavailable {args.max_unavailable} "
          f"| {med['wall']:.1f} s ({med['wall'] / waves:.1f} s per wave of {args.max_unavailable}) |")
    print(f"| API requests by the operator during the rollout | {med['requests']:.0f} "
          f"({med['requests'] / args.nodes:.1f} per node) |")
    print(f"| operator RSS: idle before the first rollout (baseline) → peak during one | {med['idle_rss']:.0f} MiB → "
          f"{med['peak_rss']:.0f} MiB (ratio {med['peak_rss'] / med['idle_rss']:.2f}) |")
    print(f"| most nodes disrupted at once (sampled every 50 ms) | {med['peak_disrupted']:.0f} "
          f"(bound {args.max_unavailable}) |")
    print(f"| reboots into the new slot | {med['reboots']:.0f} ({args.nodes} nodes) |")


if __name__ == "__main__":
    main()
