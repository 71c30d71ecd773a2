"""Shared parts of the real-RAUC tests: test keys and bundles made with openssl and `rauc bundle`, a
simulated node running `rauc service`, and a loopback HTTP server that can cut connections."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from maculaos.devenv.rauc import SimulatedRaucNode, build_bundle, make_signing_cert
from maculaos.host.bundles import Release
from maculaos.host.nodeupgrade import NodeUpgrader

COMPATIBLE = "maculaos-amd64"


@dataclass(frozen=True)
class Bundles:
    dir: Path
    cert: Path
    good: Path
    """0.2.0 signed by the fleet's key."""
    newer: Path
    """0.3.0 signed by the fleet's key."""
    impostor: Path
    """0.2.0 signed by a key the nodes do not trust."""
    incompatible: Path
    """0.2.0 for another board."""


def make_bundles(directory: Path) -> Bundles:
    cert, key = make_signing_cert(directory / "keys", "fleet")
    other_cert, other_key = make_signing_cert(directory / "keys", "impostor")
    return Bundles(
        dir=directory, cert=cert,
        good=build_bundle(directory / "good-0.2.0.raucb", "0.2.0", COMPATIBLE, cert, key),
        newer=build_bundle(directory / "good-0.3.0.raucb", "0.3.0", COMPATIBLE, cert, key),
        impostor=build_bundle(directory / "impostor-0.2.0.raucb", "0.2.0", COMPATIBLE, other_cert, other_key),
        incompatible=build_bundle(directory / "arm-0.2.0.raucb", "0.2.0", "maculaos-arm64", cert, key),
    )


def release_of(server: BundleServer, bundle: Path, version: str = "0.2.0", route: str = "") -> Release:
    data = bundle.read_bytes()
    return Release(version=version, url=server.url(bundle.name, route), sha256=hashlib.sha256(data).hexdigest(),
                   size=len(data))


@dataclass
class BundleServer:
    """Serves a directory with Range support. Routes: /<file>; /drop/<file> always cuts the connection
    halfway; /flaky/<file> cuts the first request for a file halfway, then serves."""

    root: Path
    port: int = 0
    ranges: list[str] = field(default_factory=list)
    flaky_seen: set[str] = field(default_factory=set)

    def url(self, name: str, route: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{route + '/' if route else ''}{name}"


def _handler(server: BundleServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            route, name = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
            path = server.root / name
            if not path.is_file():
                self.send_error(404, "Not Found")
                return
            data = path.read_bytes()
            start = 0
            header = self.headers.get("Range")
            if header:
                server.ranges.append(header)
                start = int(re.fullmatch(r"bytes=(\d+)-", header).group(1))  # type: ignore[union-attr]
            body = data[start:]
            self.send_response(206 if header else 200)
            if header:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = route == "drop" or (route == "flaky" and name not in server.flaky_seen)
            if route == "flaky":
                server.flaky_seen.add(name)
            self.wfile.write(body[: len(body) // 2] if cut else body)
            if cut:
                self.wfile.flush()
                self.close_connection = True

    return Handler


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return make_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="session")
def bundle_server(bundles: Bundles) -> Iterator[BundleServer]:
    server = BundleServer(bundles.dir)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    httpd.shutdown()


@pytest.fixture
def rauc_node(tmp_path: Path, bundles: Bundles) -> Iterator[SimulatedRaucNode]:
    node = SimulatedRaucNode(tmp_path / "node", "macula-nuc-01", COMPATIBLE, bundles.cert).create()
    node.start_rauc()
    try:
        yield node
    finally:
        node.shutdown()


def upgrader_for(node: SimulatedRaucNode, reboot_command: str = "true") -> NodeUpgrader:
    """The node's upgrader as the agent builds it after each boot (a new RAUC bus address each boot)."""
    return NodeUpgrader(node.host_root, node.rauc(), reboot_command)
