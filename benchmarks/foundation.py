"""Foundation benchmarks: control-plane start, operator RSS at idle, `kubectl apply` to Ready.

Run: .venv/bin/python benchmarks/foundation.py [--runs 10] [--idle-only] [--baseline REF [--rounds 3]]
Prints a markdown table for docs/benchmarks.md. Medians over --runs; the apply-to-Ready figures come with
the baseline of the same run: how long `kubectl apply` alone takes to return. With --baseline, the idle RSS
is measured for REF's operator and this checkout's, alternating --rounds times on one control plane.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from baseline import export_operator, rss_kib, run_operator, wait_leading
from kubernetes import client
from kubernetes import config as kube_config

from maculaos.api import GROUP, VERSION, spec_model
from maculaos.api.common import DEFAULT_NAMESPACE
from maculaos.devenv.controlplane import ControlPlane
from maculaos.devenv.demo import install_crds, start_operator
from maculaos.devenv.nodes import demo_fleet, register_node
from maculaos.devenv.processes import stop

REPO = Path(__file__).resolve().parents[1]


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.0f} ms"


def control_plane_start(runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            plane = ControlPlane(Path(tmp))
            started = time.perf_counter()
            plane.start()
            samples.append(time.perf_counter() - started)
            plane.stop()
    return samples


def ready(custom: client.CustomObjectsApi, plural: str, name: str) -> bool:
    try:
        obj: Any = custom.get_cluster_custom_object(GROUP, VERSION, plural, name)
    except client.ApiException:
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", []))


def apply_to_ready(plane: ControlPlane, custom: client.CustomObjectsApi, path: Path, runs: int) -> tuple[
        list[float], list[float]]:
    """(apply-to-Ready, apply alone) samples for the MaculaOS object in one example file."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    target = next(d for d in docs if d["apiVersion"].startswith(GROUP))
    plural = spec_model(target["kind"]).resource.plural
    kubectl = [str(plane.bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}"]
    to_ready, apply_only = [], []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*kubectl, "apply", "-f", str(path)], check=True, capture_output=True)
        applied = time.perf_counter()
        while not ready(custom, plural, target["metadata"]["name"]):
            if time.perf_counter() - started > 30:
                raise TimeoutError(f"{path.name} did not become Ready in 30 s")
            time.sleep(0.01)
        to_ready.append(time.perf_counter() - started)
        apply_only.append(applied - started)
        subprocess.run([*kubectl, "delete", target["kind"].lower(), target["metadata"]["name"], "--wait=true"],
                       check=True, capture_output=True)
    subprocess.run([*kubectl, "apply", "-f", str(path)], check=True, capture_output=True)  # others refer to it
    return to_ready, apply_only


def idle_rss(kubeconfig: Path, log_dir: Path, name: str, code: Path | None) -> float:
    """An operator (this checkout's, or from code) 20 s after it leads: the median of 10 RSS samples 1 s
    apart, in MiB."""
    operator = run_operator(kubeconfig, log_dir, name, 30, code)
    try:
        wait_leading(operator)
        time.sleep(20)
        samples = []
        for _ in range(10):
            samples.append(rss_kib(operator.pid))
            time.sleep(1)
        return statistics.median(samples) / 1024
    finally:
        stop(operator)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle-only", action="store_true", help="only the operator's idle RSS")
    parser.add_argument("--baseline", default="", help="git ref whose operator's idle RSS is measured too")
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline: alternations")
    args = parser.parse_args()

    if not args.idle_only:
        starts = control_plane_start(max(3, args.runs // 2))
        print(f"| control plane start (kine + apiserver /readyz + controller-manager) | {median_ms(starts)} "
              f"| median of {len(starts)} |")

    with tempfile.TemporaryDirectory() as tmp:
        plane = ControlPlane(Path(tmp))
        plane.start()
        try:
            install_crds(plane.kubeconfig, plane.bin_dir, REPO / "crds")
            api = kube_config.new_client_from_config(str(plane.kubeconfig))
            core = client.CoreV1Api(api)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=DEFAULT_NAMESPACE)))
            for node in demo_fleet(3):
                register_node(core, node)
            subprocess.run([str(plane.bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}", "apply", "-f",
                            str(REPO / "examples")], check=True, capture_output=True)
            logs = Path(tmp) / "logs"
            if args.baseline:
                code = export_operator(args.baseline, Path(tmp) / "baseline")
                rss: dict[str, list[float]] = {"baseline": [], "this": []}
                for round_ in range(args.rounds):
                    for variant, path in (("baseline", code), ("this", None)):
                        rss[variant].append(idle_rss(plane.kubeconfig, logs, f"operator-{variant}-{round_}", path))
                        print(f"{variant} round {round_}: {rss[variant][-1]:.1f} MiB", flush=True)
                before, after = statistics.median(rss["baseline"]), statistics.median(rss["this"])
                print(f"| operator RSS at idle (5 objects, 3 nodes), baseline {args.baseline} | {before:.0f} MiB "
                      f"| median of {args.rounds} operators' medians (10 samples, 1 s apart, 20 s after leading) |")
                print(f"| operator RSS at idle (5 objects, 3 nodes), this checkout | {after:.0f} MiB "
                      f"| same; ratio to baseline {after / before:.2f} |")
            else:
                rss = idle_rss(plane.kubeconfig, logs, 'operator', None)
                print(f"| operator RSS at idle (5 objects, 3 nodes) | {rss:.0f} MiB | median of 10 samples, "
                      "1 s apart, 20 s after leading |")
            if args.idle_only:
                return
            operator = start_operator(plane.kubeconfig, logs, resync_seconds=30)
            try:
                custom = client.CustomObjectsApi(api)
                for path in sorted((REPO / "examples").glob("*.yaml")):
                    to_ready, apply_only = apply_to_ready(plane, custom, path, args.runs)
                    ratio = statistics.median(to_ready) / statistics.median(apply_only)
                    print(f"| `kubectl apply` → Ready, examples/{path.name} | {median_ms(to_ready)} "
                          f"(`kubectl apply` alone: {median_ms(apply_only)}; ratio {ratio:.1f}) "
                          f"| median of {args.runs} |")
            finally:
                stop(operator)
        finally:
            plane.stop()


if __name__ == "__main__":
    main()
