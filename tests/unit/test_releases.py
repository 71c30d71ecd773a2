"""Release resolution: choosing from an index, and every way fetching one fails, as status messages."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from maculaos.api.nodeupgrade import NodeUpgradeSpec
from maculaos.controller.nodeupgrade_releases import (
    ReleaseError,
    ReleaseIndex,
    ReleaseResolver,
    fetch_index,
    index_url,
    pick_release,
)

SHA = "a" * 64
INDEX = ReleaseIndex.model_validate({"channels": {
    "stable": [{"version": "0.1.0", "url": "https://r.example/0.1.0.raucb", "sha256": SHA, "size": 1},
               {"version": "0.10.0", "url": "https://r.example/0.10.0.raucb", "sha256": SHA, "size": 3},
               {"version": "0.9.1", "url": "https://r.example/0.9.1.raucb", "sha256": SHA, "size": 2}],
    "nightly": [{"version": "0.11.0-nightly.5", "url": "https://r.example/n.raucb", "sha256": SHA, "size": 4}],
}})


def spec(**fields: Any) -> NodeUpgradeSpec:
    return NodeUpgradeSpec.model_validate({"source": {"releaseIndex": "https://r.example/index.yaml"}, **fields})


def test_newest_of_the_channel_by_semver_not_by_text() -> None:
    resolution = pick_release(spec(channel="stable"), INDEX)
    assert resolution.target is not None and resolution.target.version == "0.10.0"
    assert resolution.target.size == 3 and resolution.available == "0.10.0"


def test_pinned_version_reports_the_newer_one_available() -> None:
    resolution = pick_release(spec(channel="stable", version="0.9.1"), INDEX)
    assert resolution.target is not None and resolution.target.url == "https://r.example/0.9.1.raucb"
    assert resolution.available == "0.10.0"


def test_version_missing_from_the_channel_is_an_error_naming_the_field() -> None:
    resolution = pick_release(spec(channel="stable", version="0.11.0-nightly.5"), INDEX)
    assert resolution.target is None
    assert resolution.error == ("spec.version 0.11.0-nightly.5 is not in the release index "
                                "(channel stable; newest is 0.10.0)")
    assert pick_release(spec(version="0.11.0-nightly.5"), INDEX).target is not None  # any channel


def test_url_and_local_path_need_no_index() -> None:
    by_url = ReleaseResolver().resolve(NodeUpgradeSpec.model_validate(
        {"version": "1.2.3", "source": {"url": "https://r.example/b.raucb", "sha256": SHA}}))
    assert by_url.target is not None and (by_url.target.url, by_url.target.sha256) == ("https://r.example/b.raucb", SHA)
    local = ReleaseResolver().resolve(NodeUpgradeSpec.model_validate(
        {"version": "1.2.3", "source": {"localPath": "/media/usb"}}))
    assert local.target is not None and local.target.url is None and local.target.version == "1.2.3"


def test_github_source_maps_to_the_latest_release_asset() -> None:
    assert index_url("github://macula-io/macula-os") == \
        "https://github.com/macula-io/macula-os/releases/latest/download/maculaos-index.yaml"


class _Handler(http.server.BaseHTTPRequestHandler):
    bodies: dict[str, bytes] = {}
    hits = 0

    def do_GET(self) -> None:  # noqa: N802
        _Handler.hits += 1
        body = self.bodies.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.bodies = {
        "/index.json": b'{"channels": {"stable": [{"version": "1.0.0", "url": "https://r.example/1.raucb", '
                       b'"sha256": "' + SHA.encode() + b'", "size": 9}]}}',
        "/garbage": b"{not: [valid",
        "/wrong-shape.yaml": b"channels:\n  stable:\n    - version: 1.0.0\n      url: ftp://x\n",
    }
    _Handler.hits = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_json_index(server: str) -> None:
    assert fetch_index(f"{server}/index.json").channels["stable"][0].size == 9  # type: ignore[index]


@pytest.mark.parametrize(("path", "expected"), [
    ("/missing", "HTTP 404"),
    ("/garbage", "is neither JSON nor YAML"),
    ("/wrong-shape.yaml", "channels.stable.0.url: String should match pattern"),
])
def test_fetch_errors_name_the_url_and_the_problem(server: str, path: str, expected: str) -> None:
    with pytest.raises(ReleaseError) as caught:
        fetch_index(f"{server}{path}")
    assert f"release index {server}{path}" in str(caught.value) and expected in str(caught.value)


def test_unreachable_index() -> None:
    with pytest.raises(ReleaseError, match=r"release index http://127.0.0.1:9/i.yaml unreachable"):
        fetch_index("http://127.0.0.1:9/i.yaml", timeout=2)


def test_resolver_keeps_an_index_for_check_interval(server: str) -> None:
    resolver = ReleaseResolver()
    upgrade = NodeUpgradeSpec.model_validate({"channel": "stable", "checkInterval": "1h",
                                              "source": {"releaseIndex": f"{server}/index.json"}})
    for _ in range(3):
        assert resolver.resolve(upgrade).available == "1.0.0"
    assert _Handler.hits == 1
