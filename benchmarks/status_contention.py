"""Why the agents' reports stop scaling: N writers patching status.nodes.<node> of ONE object.

Measures, against the local control plane (kine/sqlite, like a single-server k3s):
- the cost of one status merge patch as the object grows (sequential writers, no contention);
- N concurrent writers (one patch each, as N agents reporting the same MeshRole change), with and without
  a random spread of the writes, as wall time and refused (timed-out) patches;
- the alternative design for comparison: N writers each patching an object of its own (per-node report
  objects), same payload.

Run: .venv/bin/python benchmarks/status_contention.py [--nodes 20 50 100] [--spread 0 2]
Prints markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client
from kubernetes import config as kube_config

from maculaos.api import GROUP, VERSION
from maculaos.devenv.controlplane import ControlPlane
from maculaos.devenv.demo import install_crds
from maculaos.kube.rest import MERGE_PATCH

REPO = Path(__file__).resolve().parents[1]
ENTRY = {"phase": "Applied", "message": "roles peer, gateway; firewall table inet maculaos loaded",
         "lastUpdateTime": "2026-11-25T21:00:00Z"}


def report(custom: client.CustomObjectsApi, name: str, node: int, generation: int) -> bool:
    body = {"status": {"nodes": {f"node-{node:03d}": {**ENTRY, "observedGeneration": generation}}}}
    try:
        custom.patch_cluster_custom_object_status(GROUP, VERSION, "meshroles", name, body, _content_type=MERGE_PATCH)
    except client.ApiException:
        return False
    return True


def meshrole(custom: client.CustomObjectsApi, name: str) -> None:
    custom.create_cluster_custom_object(GROUP, VERSION, "meshroles", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MeshRole", "metadata": {"name": name}, "spec": {"roles": []}})


def sequential(custom: client.CustomObjectsApi, most: int) -> None:
    meshrole(custom, "sequential")
    for upto in range(20, most + 1, 20):
        samples = []
        for node in range(upto - 20, upto):
            started = time.perf_counter()
            report(custom, "sequential", node, 1)
            samples.append(time.perf_counter() - started)
        print(f"| one status patch, object with {upto - 20}–{upto} node entries | "
              f"median {statistics.median(samples) * 1000:.0f} ms | 20 patches, one writer |")


def concurrent(custom: client.CustomObjectsApi, nodes: int, spread: float) -> None:
    name = f"concurrent-{nodes}-{spread:g}"
    meshrole(custom, name)
    walls, refused = [], []
    for generation in range(1, 4):  # 3 rounds: the object already holds every entry from round 2 on
        failures = [0]

        def write(node: int) -> None:
            time.sleep(random.uniform(0, spread))
            if not report(custom, name, node, generation):
                failures[0] += 1
        started = time.perf_counter()
        threads = [threading.Thread(target=write, args=(n,)) for n in range(nodes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        walls.append(time.perf_counter() - started)
        refused.append(failures[0])
    print(f"| {nodes} writers at once, spread {spread:g} s | median {statistics.median(walls):.1f} s, "
          f"refused {statistics.median(refused):.0f} of {nodes} | 3 rounds |")


def own_objects(custom: client.CustomObjectsApi, nodes: int) -> None:
    for node in range(nodes):
        meshrole(custom, f"own-{nodes}-{node:03d}")
    walls = []
    for generation in range(1, 4):
        started = time.perf_counter()
        threads = [threading.Thread(target=report, args=(custom, f"own-{nodes}-{n:03d}", n, generation))
                   for n in range(nodes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        walls.append(time.perf_counter() - started)
    print(f"| {nodes} writers at once, each on an object of its own | median {statistics.median(walls):.1f} s | "
          "3 rounds |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--spread", type=float, nargs="+", default=[0.0, 2.0])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plane = ControlPlane(Path(tmp) / "controlplane")
        plane.start()
        try:
            install_crds(plane.kubeconfig, plane.bin_dir, REPO / "crds")
            configuration = client.Configuration()
            kube_config.load_kube_config(str(plane.kubeconfig), client_configuration=configuration)
            configuration.connection_pool_maxsize = max(args.nodes) * 2
            custom = client.CustomObjectsApi(client.ApiClient(configuration))
            sequential(custom, max(args.nodes))
            for nodes in args.nodes:
                own_objects(custom, nodes)
                for spread in args.spread:
                    concurrent(custom, nodes, spread)
        finally:
            plane.stop()


if __name__ == "__main__":
    main()
