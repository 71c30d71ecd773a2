"""A node advertises its rest-server only when config.yaml asks for it and a real rest-server answers:
probed against real rest-servers on loopback, a plain HTTP server that is not one, and a closed port; each
bad config.yaml value named by its key."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maculaos.agent.backup_server import CONDITION, advertisement
from maculaos.devenv.processes import free_port
from maculaos.devenv.restserver import RestServer
from maculaos.host.backup_server import probe_rest_server, server_setting

NODE: dict[str, Any] = {"metadata": {"name": "macula-nuc-01"},
                        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.3.7"}]}}


@pytest.fixture
def plain_http() -> Iterator[str]:
    """Some other web server on the port (a dashboard, say): it answers, but is no rest-server."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def write_config(host: Path, section: str) -> None:
    (host / "var/lib/maculaos").mkdir(parents=True, exist_ok=True)
    (host / "var/lib/maculaos/config.yaml").write_text(f"maculaos:\n  hostname: macula-nuc-01\n{section}")


def test_probe_tells_a_rest_server_from_other_servers_and_from_none(rest_server: RestServer, plain_http: str) -> None:
    assert probe_rest_server(rest_server.url) is None
    other = probe_rest_server(plain_http)
    assert other is not None and "not as a restic rest-server" in other
    closed = f"http://127.0.0.1:{free_port()}"
    refused = probe_rest_server(closed)
    assert refused is not None and closed in refused and "refused" in refused.lower()


def test_advertised_only_while_the_configured_server_answers(tmp_path: Path, rest_server: RestServer) -> None:
    host = tmp_path / "host"
    write_config(host, "")
    assert advertisement(host, NODE) == advertisement(host, NODE)
    assert advertisement(host, NODE).url is None and advertisement(host, NODE).condition is None

    write_config(host, f"  backup_server:\n    url: {rest_server.url}/\n")
    serving = advertisement(host, NODE)
    assert serving.url == rest_server.url and serving.condition is not None and serving.condition[:2] == (
        "True", "Serving")

    rest_server.stop()
    stopped = advertisement(host, NODE)
    assert stopped.url is None and stopped.condition is not None
    assert stopped.condition[:2] == ("False", "NotAnswering") and rest_server.url in stopped.condition[2]

    write_config(host, "  backup_server:\n    enabled: false\n")
    had = {**NODE, "status": {**NODE["status"], "conditions": [{"type": CONDITION, "status": "True"}]}}
    withdrawn = advertisement(host, had)
    assert withdrawn.url is None and withdrawn.condition is not None and withdrawn.condition[1] == "NotConfigured"


def test_url_defaults_to_the_nodes_internal_ip_and_port() -> None:
    config: dict[str, Any] = {"maculaos": {"backup_server": {"port": 8100}}}
    assert server_setting(config, "10.0.3.7") is not None
    assert server_setting(config, "10.0.3.7").url == "http://10.0.3.7:8100"  # type: ignore[union-attr]
    assert server_setting({"maculaos": {"backup_server": {}}}, "fd00::7").url == "http://[fd00::7]:8000"  # type: ignore[union-attr]
    assert server_setting({"maculaos": {}}, "10.0.3.7") is None


@pytest.mark.parametrize(("section", "named"), [
    ("  backup_server:\n    url: ftp://10.0.3.7\n", "maculaos.backup_server.url"),
    ("  backup_server:\n    port: 0\n", "maculaos.backup_server.port"),
    ("  backup_server:\n    port: 70000\n", "maculaos.backup_server.port"),
    ("  backup_server:\n    adress: http://10.0.3.7:8000\n", "maculaos.backup_server.adress"),
    ("  backup_server:\n    enabled: maybe\n", "maculaos.backup_server.enabled"),
    ("  backup_server: http://10.0.3.7:8000\n", "maculaos.backup_server must be a mapping"),
    ("  backup_server: {}\n", "has no InternalIP"),
    ("  backup_server: [\n", "not valid YAML"),
])
def test_bad_settings_are_named_and_nothing_is_advertised(tmp_path: Path, section: str, named: str) -> None:
    host = tmp_path / "host"
    write_config(host, section)
    node = NODE if "InternalIP" not in named else {"metadata": NODE["metadata"], "status": {}}
    probed: list[str] = []
    ad = advertisement(host, node, probe=lambda url: probed.append(url) or None)
    assert ad.url is None and probed == []
    assert ad.condition is not None and ad.condition[:2] == ("False", "ConfigInvalid") and named in ad.condition[2]
