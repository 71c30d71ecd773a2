"""One small HTTP server for a process's Prometheus metrics and its probes (the agent's and the
operator's): /metrics from prometheus-client's registry, plus named probe paths that answer 200 while
their check holds and 503 with the reason when it does not."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

#: A probe: (holds, what to say). The text is the body, so `curl` shows why a probe fails.
Probe = Callable[[], tuple[bool, str]]


def parse_address(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """`[HOST:]PORT` as the --metrics-port flags take it; a bad value says what would be right."""
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not [HOST:]PORT with PORT a number from 0 to 65535, e.g. 9751 or "
                         "127.0.0.1:9751")
    return host or default_host, int(port)


def serve(address: str, port: int, probes: Mapping[str, Probe],
          registry: CollectorRegistry = REGISTRY) -> ThreadingHTTPServer:
    """Serve /metrics and the probes (path -> check) in a daemon thread; port 0 picks a free one."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/metrics":
                self._answer(HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path in probes:
                ok, text = _run(probes[self.path])
                self._answer(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, f"{text}\n".encode(),
                             "text/plain")
            else:
                self._answer(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _run(probe: Probe) -> tuple[bool, str]:
    """A probe that raises fails, with the exception as its reason (the server must keep answering)."""
    try:
        return probe()
    except Exception as exc:
        return False, f"probe failed: {exc}"
