"""A test Portal: a real HTTP server on loopback implementing the Macula Portal's pairing API
(`POST /api/console/pair`), standing in for the real Portal (a separate product). It issues codes, and
enforces what the Portal does: a code pairs once and expires; an unknown one is refused. Modes make it
answer garbage, or stop answering, for the node's error paths."""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PAIR_PATH = "/api/console/pair"


@dataclass
class Code:
    expires: float
    used: bool = False


@dataclass
class PortalState:
    codes: dict[str, Code] = field(default_factory=dict)
    paired: list[dict[str, Any]] = field(default_factory=list)
    """Every successful pairing: the node's name and the refresh token issued."""
    mode: str = "normal"
    """normal, garbage (200 with a non-answer), html (200 with HTML), error500."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class TestPortal:
    """`with TestPortal() as portal:` serves on 127.0.0.1 on a free port; `portal.url`."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.state = PortalState()
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def answer(self, status: int, body: dict[str, Any] | str) -> None:
                data = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if isinstance(body, dict) else "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                if self.path != PAIR_PATH:
                    self.answer(404, {"error": "not found"})
                    return
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    request = json.loads(self.rfile.read(length))
                    code, node = str(request["code"]), str(request["node"])
                except (ValueError, KeyError, TypeError):
                    self.answer(400, {"error": "bad request"})
                    return
                if state.mode == "garbage":
                    self.answer(200, {"hello": "world"})
                    return
                if state.mode == "html":
                    self.answer(200, "<html>maintenance</html>")
                    return
                if state.mode == "error500":
                    self.answer(500, "<html>oops</html>")
                    return
                with state.lock:
                    entry = state.codes.get(code)
                    if entry is None:
                        self.answer(404, {"error": "unknown"})
                    elif entry.used:
                        self.answer(409, {"error": "used"})
                    elif time.time() > entry.expires:
                        self.answer(410, {"error": "expired"})
                    else:
                        entry.used = True
                        token = secrets.token_urlsafe(32)
                        state.paired.append({"node": node, "refresh_token": token})
                        self.answer(200, {"refresh_token": token, "user_name": "ana@shop.example",
                                          "org_id": "org-4711", "org_name": "Shop Example"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def issue(self, ttl: float = 300.0) -> str:
        """A new pairing code, valid for ttl seconds (negative: expired already)."""
        code = "-".join(secrets.token_hex(2).upper() for _ in range(3))
        with self.state.lock:
            self.state.codes[code] = Code(expires=time.time() + ttl)
        return code

    def __enter__(self) -> TestPortal:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
