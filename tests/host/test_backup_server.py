"""A node advertises its rest-server only when config.yaml asks for it, a real rest-server answers and the
node's firewall admits its port: probed against real rest-servers on loopback, a plain HTTP server that is
not one, and a closed port; the firewall is the real nft ruleset loaded in a network namespace; each bad
config.yaml value named by its key."""

from __future__ import annotations

import configparser
import http.server
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from maculaos.agent.backup_server import CONDITION, advertisement
from maculaos.devenv.controlplane import default_bin_dir
from maculaos.devenv.nodes import IMAGE_OVERLAY
from maculaos.devenv.processes import free_port, spawn, stop, wait_for_port
from maculaos.devenv.restserver import RestServer
from maculaos.host.backup_server import (BINARY, ENVIRONMENT, SERVICE, converge_service, probe_rest_server,
                                         served_port, server_setting)
from maculaos.host.config import read_config, write_maculaos_section
from maculaos.host.firewall import tcp_port_blocked
from maculaos.host.mesh import apply_mesh, plan_mesh
from maculaos.host.systemd import Systemd

#: A firewall that admits every port (the tests below are about the config and the probe).
OPEN: Callable[[int], str | None] = lambda port: None
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
    assert advertisement(host, NODE, OPEN) == advertisement(host, NODE, OPEN)
    assert advertisement(host, NODE, OPEN).url is None and advertisement(host, NODE, OPEN).condition is None

    write_config(host, f"  backup_server:\n    url: {rest_server.url}/\n")
    serving = advertisement(host, NODE, OPEN)
    assert serving.url == rest_server.url and serving.condition is not None and serving.condition[:2] == (
        "True", "Serving")

    rest_server.stop()
    stopped = advertisement(host, NODE, OPEN)
    assert stopped.url is None and stopped.condition is not None
    assert stopped.condition[:2] == ("False", "NotAnswering") and rest_server.url in stopped.condition[2]

    write_config(host, "  backup_server:\n    enabled: false\n")
    had = {**NODE, "status": {**NODE["status"], "conditions": [{"type": CONDITION, "status": "True"}]}}
    withdrawn = advertisement(host, had, OPEN)
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
    ad = advertisement(host, node, OPEN, probe=lambda url: probed.append(url) or None)
    assert ad.url is None and probed == []
    assert ad.condition is not None and ad.condition[:2] == ("False", "ConfigInvalid") and named in ad.condition[2]


def test_a_firewalled_server_is_not_advertised_until_the_config_opens_its_port(
        host_root: Path, netns_nft: str, rest_server: RestServer) -> None:
    """The node's ruleset (default policy drop, from MeshRoles) was loaded before config.yaml asked to serve:
    the server answers locally, but peers' connections would be dropped, so it is not advertised. The next
    mesh pass renders the ruleset with the configured port open (the config is the one switch), and then
    it is; switching the server off closes the port again."""
    apply_mesh(host_root, plan_mesh({}), Systemd(host_root), netns_nft)
    write_maculaos_section(host_root, "backup_server", {"url": rest_server.url})
    port = int(rest_server.url.rsplit(":", 1)[1])

    def blocked(p: int) -> str | None:
        return tcp_port_blocked(p, netns_nft)

    ad = advertisement(host_root, NODE, blocked)
    assert ad.url is None and ad.condition is not None and ad.condition[:2] == ("False", "Firewalled")
    assert f"drops TCP port {port}" in ad.condition[2] and rest_server.url in ad.condition[2]

    apply_mesh(host_root, plan_mesh({}), Systemd(host_root), netns_nft)
    table = subprocess.run([netns_nft, "list", "table", "inet", "maculaos"], capture_output=True, text=True).stdout
    assert f'tcp dport {port} accept comment "backup server"' in table
    ad = advertisement(host_root, NODE, blocked)
    assert ad.url == rest_server.url and ad.condition is not None and ad.condition[1] == "Serving"

    write_maculaos_section(host_root, "backup_server", {"url": rest_server.url, "enabled": False})
    apply_mesh(host_root, plan_mesh({}), Systemd(host_root), netns_nft)
    assert blocked(port) is not None and advertisement(host_root, NODE, blocked).url is None


@pytest.mark.parametrize(("section", "port"), [
    ({"port": 8100}, 8100), ({}, 8000), ({"url": "https://nas.shop.example/restic"}, 443),
    ({"url": "http://10.0.3.7:9000/", "port": 8100}, 9000), ({"url": "http://10.0.3.7"}, 80),
    ({"enabled": False, "port": 8100}, None), ({"port": 0}, None), ({"url": "http://10.0.3.7:99999"}, None),
    ("http://10.0.3.7:8000", None),
])
def test_the_port_the_firewall_opens_is_the_one_peers_use(section: Any, port: int | None) -> None:
    assert served_port({"maculaos": {"backup_server": section}}) == port
    assert served_port({"maculaos": {}}) is None and served_port({"maculaos": "x"}) is None


def test_the_image_unit_serves_exactly_while_config_asks(host_root: Path, tmp_path: Path) -> None:
    """The image's maculaos-backup-server.service (from image-build/overlay) on a sandbox host: enabled by
    real `systemctl --root` with its port written only while config.yaml asks, disabled when it stops
    asking; its ExecStart, run as systemd would (EnvironmentFile expanded), is a rest-server answering on
    that port with its repositories in the unit's StateDirectory."""
    unit_file = host_root / "usr/lib/systemd/system" / SERVICE
    shutil.copy(IMAGE_OVERLAY / "usr/lib/systemd/system" / SERVICE, unit_file)
    (host_root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (host_root / BINARY.lstrip("/")).symlink_to(default_bin_dir() / "rest-server")
    systemd = Systemd(host_root)
    assert not converge_service(host_root, read_config(host_root), systemd)
    assert not systemd.is_enabled(SERVICE) and not (host_root / ENVIRONMENT).exists()

    port = free_port()
    write_maculaos_section(host_root, "backup_server", {"port": port})
    assert converge_service(host_root, read_config(host_root), systemd)
    assert systemd.is_enabled(SERVICE) and f"LISTEN=:{port}\n" in (host_root / ENVIRONMENT).read_text()
    assert not converge_service(host_root, read_config(host_root), systemd)  # nothing to do twice

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(unit_file.read_text())
    service = unit["Service"]
    assert service["EnvironmentFile"] == f"/{ENVIRONMENT}"
    assert unit["Unit"]["ConditionPathExists"] == f"/{ENVIRONMENT}"
    env = dict(line.split("=", 1) for line in (host_root / ENVIRONMENT).read_text().splitlines()
               if line and not line.startswith("#"))
    argv = [arg.replace("${LISTEN}", env["LISTEN"]) for arg in shlex.split(service["ExecStart"])]
    assert argv[0] == BINARY and argv[argv.index("--path") + 1] == f"/var/lib/{service['StateDirectory']}"
    argv[0] = str(host_root / BINARY.lstrip("/"))
    argv[argv.index("--path") + 1] = str(host_root / "var/lib" / service["StateDirectory"])
    argv[argv.index("--listen") + 1] = f"127.0.0.1{env['LISTEN']}"  # loopback only in a test
    proc, record = spawn("unit-rest-server", argv, tmp_path / "logs")
    try:
        wait_for_port(port, 15, proc)
        assert probe_rest_server(f"http://127.0.0.1:{port}") is None
    finally:
        stop(record)

    write_maculaos_section(host_root, "backup_server", {"port": port, "enabled": False})
    assert converge_service(host_root, read_config(host_root), systemd) and not systemd.is_enabled(SERVICE)


def test_the_unit_is_left_alone_on_a_host_without_the_server(host_root: Path) -> None:
    """The sandbox hosts and an image built without the tools profile: no binary, nothing enabled."""
    shutil.copy(IMAGE_OVERLAY / "usr/lib/systemd/system" / SERVICE, host_root / "usr/lib/systemd/system" / SERVICE)
    write_maculaos_section(host_root, "backup_server", {"port": 8000})
    assert not converge_service(host_root, read_config(host_root), Systemd(host_root))
    assert not Systemd(host_root).is_enabled(SERVICE)
