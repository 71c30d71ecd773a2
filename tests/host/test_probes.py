"""Probes against real processes, servers on loopback and the real filesystem."""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maculaos.api.healthcheck import Check
from maculaos.host.healthcheck import run_probe
from tests.fakes import fake_systemctl, set_unit


def check(**fields: Any) -> Check:
    return Check.model_validate({"name": "c", **fields})


@pytest.fixture
def web() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            code = 200 if self.path == "/health" else 500
            body = b"mesh ok" if code == 200 else b"broken"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_process_by_name_and_pidfile(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep":  # exec may not have happened yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert run_probe(check(type="process", process={"name": "sleep"}), tmp_path, 1).ok
        (tmp_path / "run").mkdir()
        (tmp_path / "run/x.pid").write_text(f"{proc.pid}\n")
        assert run_probe(check(type="process", process={"pidFile": "/run/x.pid"}), tmp_path, 1).ok
    finally:
        proc.kill()
        proc.wait()
    gone = run_probe(check(type="process", process={"pidFile": "/run/x.pid"}), tmp_path, 1)
    assert not gone.ok and "gone" in gone.output
    missing = run_probe(check(type="process", process={"name": "no-such-proc"}), tmp_path, 1)
    assert not missing.ok and "no process named no-such-proc" in missing.output


def test_http_status_and_body(web: str, tmp_path: Path) -> None:
    assert run_probe(check(type="http", http={"url": f"{web}/health", "bodyContains": "ok"}), tmp_path, 2).ok
    wrong_body = run_probe(check(type="http", http={"url": f"{web}/health", "bodyContains": "ready"}), tmp_path, 2)
    assert not wrong_body.ok and "lacks 'ready'" in wrong_body.output
    error = run_probe(check(type="http", http={"url": f"{web}/other"}), tmp_path, 2)
    assert not error.ok and "status 500" in error.output
    assert run_probe(check(type="http", http={"url": f"{web}/other", "expectStatus": [500]}), tmp_path, 2).ok


def test_unreachable_http_and_tcp(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    http = run_probe(check(type="http", http={"url": f"http://127.0.0.1:{port}/"}), tmp_path, 1)
    assert not http.ok and "refused" in http.output.lower()
    tcp = run_probe(check(type="tcp", tcp={"port": port}), tmp_path, 1)
    assert not tcp.ok and "refused" in tcp.output.lower()


def test_tcp_open(web: str, tmp_path: Path) -> None:
    assert run_probe(check(type="tcp", tcp={"port": int(web.rsplit(":", 1)[1])}), tmp_path, 1).ok


def test_disk_threshold_on_the_real_filesystem(tmp_path: Path) -> None:
    (tmp_path / "var/lib").mkdir(parents=True)
    roomy = run_probe(check(type="disk", disk={"path": "/var/lib", "threshold": "100%"}), tmp_path, 1)
    assert roomy.ok and "% full" in roomy.output
    full = run_probe(check(type="disk", disk={"path": "/var/lib", "threshold": "0%"}), tmp_path, 1)
    assert not full.ok and "threshold 0%" in full.output
    absent = run_probe(check(type="disk", disk={"path": "/nope"}), tmp_path, 1)
    assert not absent.ok and "cannot stat /nope" in absent.output


def test_systemd_unit_active(tmp_path: Path) -> None:
    systemctl = fake_systemctl(tmp_path)
    unit = check(type="systemd", systemd={"unit": "k3s.service"})
    assert not run_probe(unit, tmp_path, 1, str(systemctl)).ok
    set_unit(systemctl, "k3s.service")
    result = run_probe(unit, tmp_path, 1, str(systemctl))
    assert result.ok and result.output == "k3s.service is active"
