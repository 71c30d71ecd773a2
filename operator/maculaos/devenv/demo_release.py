"""The demo's release server: signed RAUC bundles and a release index, served over HTTP on loopback by a
process of its own, as a site's update server would serve them. 0.2.0 is offered on the stable channel;
0.3.0 on the beta channel is a bad build whose kernel panics at boot (the rollback story)."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from maculaos.devenv.processes import ProcessRecord, spawn, wait_for_port
from maculaos.devenv.rauc import build_bundle, make_signing_cert

#: The demo nodes' RAUC compatible: one bundle fits every simulated node, whatever its arch label says.
COMPATIBLE = "maculaos-demo"
GOOD_VERSION = "0.2.0"
BAD_VERSION = "0.3.0"
INDEX_NAME = "index.json"


@dataclass(frozen=True)
class DemoReleases:
    """What the release server serves and what the nodes need to trust it."""

    directory: Path
    cert: Path
    """The fleet's signing certificate: every demo node's RAUC keyring."""
    port: int

    @property
    def index_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{INDEX_NAME}"


def build_releases(directory: Path, port: int) -> DemoReleases:
    """Sign the bundles with a fresh fleet key and write the index naming them at http://127.0.0.1:port."""
    cert, key = make_signing_cert(directory / "keys", "demo-fleet")
    channels: dict[str, list[dict[str, object]]] = {}
    for channel, version, panics in (("stable", GOOD_VERSION, False), ("beta", BAD_VERSION, True)):
        bundle = build_bundle(directory / f"maculaos-{version}.raucb", version, COMPATIBLE, cert, key, panics=panics)
        data = bundle.read_bytes()
        channels[channel] = [{"version": version, "url": f"http://127.0.0.1:{port}/{bundle.name}",
                              "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]
    (directory / INDEX_NAME).write_text(json.dumps({"channels": channels}, indent=2) + "\n")
    return DemoReleases(directory, cert, port)


def start_release_server(releases: DemoReleases, log_dir: Path, timeout: float = 15.0) -> ProcessRecord:
    """Python's own HTTP file server on loopback, serving the release directory (keys excluded: the server
    sees only the bundles and the index, copied into its own root)."""
    root = releases.directory / "served"
    root.mkdir(parents=True, exist_ok=True)
    for path in releases.directory.iterdir():
        if path.is_file():
            (root / path.name).write_bytes(path.read_bytes())
    proc, record = spawn("release-server", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                            "--directory", str(root), str(releases.port)], log_dir)
    wait_for_port(releases.port, timeout, proc)
    return record
