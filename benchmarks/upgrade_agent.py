"""The agent's overhead on an install over a bare `rauc install` of the same bundle, on one simulated
node with real RAUC (file slots, the node's own `rauc service`), measured in the same run, interleaved.

Two sources, each against its own baseline:
- local directory (spec.source.localPath): the agent's install step (RAUC status, manifest read and
  version/compatible check, `rauc install` with progress parsing, keeping the running slot the next boot,
  state written to the data partition) vs `rauc install FILE`;
- URL (status.target.url): the same plus the agent's download (free-space check, streaming SHA-256, size
  check) vs `curl -o FILE URL` followed by `rauc install FILE`.

Run: .venv/bin/python benchmarks/upgrade_agent.py [--runs 7] [--size-mib 176]
Prints markdown rows for docs/benchmarks.md. Needs root (mount namespace for `rauc service`).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from maculaos.api.nodeupgrade import AgentPhase
from maculaos.devenv.rauc import SimulatedRaucNode, build_bundle, make_signing_cert
from maculaos.host.bundles import Release
from maculaos.host.nodeupgrade import NodeUpgrader

COMPATIBLE = "maculaos-amd64"


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(directory))  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, int(httpd.server_address[1])


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size-mib", type=int, default=176,
                        help="bundle payload; 176 MiB is the size of the image's squashfs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="maculaos-bench-upgrade-"))
    node: SimulatedRaucNode | None = None
    httpd = None
    try:
        cert, key = make_signing_cert(work / "keys", "fleet")
        bundle = build_bundle(work / "www" / "maculaos-0.2.0.raucb", "0.2.0", COMPATIBLE, cert, key,
                              payload_bytes=args.size_mib * 1024 * 1024, random_payload=True)
        node = SimulatedRaucNode(work / "node", "bench", COMPATIBLE, cert,
                                 slot_size=(args.size_mib + 8) * 1024 * 1024).create()
        node.start_rauc()
        usb = node.host_root / "media/usb"  # the node's RAUC sees only its own root
        usb.mkdir(parents=True)
        shutil.copy(bundle, usb / bundle.name)
        data = bundle.read_bytes()
        httpd, port = serve(bundle.parent)
        release = Release("0.2.0", f"http://127.0.0.1:{port}/{bundle.name}", hashlib.sha256(data).hexdigest(),
                          len(data))
        rauc = node.rauc()
        upgrader = NodeUpgrader(node.host_root, rauc, "true")
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": node.layout.bus_address}
        fetched = node.host_root / "tmp/fetched.raucb"
        fetched.parent.mkdir(parents=True, exist_ok=True)

        def bare_install(path: Path) -> None:
            subprocess.run([str(node.rauc_command), "install", rauc.node_path(path)], env=env, check=True,
                           capture_output=True)

        def bare_download_install() -> None:
            subprocess.run(["curl", "-sSfo", str(fetched), release.url or ""], check=True)
            bare_install(fetched)

        def agent(local: bool) -> None:
            state = upgrader.install(release if not local else Release("0.2.0"), usb if local else None, "bench",
                                     lambda *_: None)
            assert state.phase is AgentPhase.INSTALLED, state.message

        def settle() -> None:
            """Start each sample from the same place: no downloaded file, dirty pages written back."""
            shutil.rmtree(upgrader.state_dir, ignore_errors=True)
            fetched.unlink(missing_ok=True)
            os.sync()

        samples: dict[str, list[float]] = {k: [] for k in ("bare", "agent", "bare-url", "agent-url")}
        bare_install(usb / bundle.name)  # warm caches once
        for _ in range(args.runs):
            for name, action in (("bare", lambda: bare_install(usb / bundle.name)),
                                 ("agent", lambda: agent(local=True)), ("bare-url", bare_download_install),
                                 ("agent-url", lambda: agent(local=False))):
                settle()
                samples[name].append(timed(action))
        med = {k: statistics.median(v) for k, v in samples.items()}
        size = f"{len(data) / 2**20:.0f} MiB bundle"
        print(f"| install from a local directory, {size} | {med['agent'] * 1000:.0f} ms | "
              f"bare `rauc install` {med['bare'] * 1000:.0f} ms (ratio {med['agent'] / med['bare']:.2f}) |")
        print(f"| install from a URL on loopback, {size} | {med['agent-url'] * 1000:.0f} ms | "
              f"`curl` + bare `rauc install` {med['bare-url'] * 1000:.0f} ms "
              f"(ratio {med['agent-url'] / med['bare-url']:.2f}) |")
    finally:
        if node is not None:
            node.shutdown()
        if httpd is not None:
            httpd.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
