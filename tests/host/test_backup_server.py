"""A node advertises its rest-server only when config.yaml asks for it, a real rest-server answers and the
node's firewall admits its port: probed against real rest-servers on loopback, a plain HTTP server that is
not one, and a closed port; the firewall is the real nft ruleset loaded in a network namespace; each bad
config.yaml value named by its key."""

from __future__ import annotations

import base64
import http.server
import re
import shlex
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from maculaos.agent.backup_server import CONDITION, advertisement
from maculaos.agent.meshrole import converge_mesh
from maculaos.devenv.controlplane import default_bin_dir
from maculaos.devenv.nodes import IMAGE_OVERLAY
from maculaos.devenv.processes import ProcessRecord, free_port, spawn, stop, wait_for_port
from maculaos.host.backup_server import (
    BINARY,
    ENVIRONMENT,
    HTPASSWD,
    SERVICE,
    backup_server_warnings,
    converge_service,
    probe_rest_server,
    served_port,
    served_rule,
    server_setting,
)
from maculaos.host.config import write_maculaos_section
from maculaos.host.firewall import tcp_port_blocked
from maculaos.host.meshrole import apply_mesh, plan_mesh
from maculaos.host.nodeconfig import NodeConfig, read_node_config
from maculaos.host.restic import Restic, ResticError, ResticFailure, rest_repository
from maculaos.host.systemd import Systemd
from tests.fakes import restarts, systemctl_over_root
from tests.htpasswd import htpasswd_line
from tests.restserver import RestServer


#: A firewall that admits every port (the tests below are about the config and the probe).
def open_firewall(port: int) -> str | None:
    return None


OPEN: Callable[[int], str | None] = open_firewall
NODE: dict[str, Any] = {"metadata": {"name": "macula-nuc-01"},
                        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.3.7"}]}}
#: A user of a node's backup server, as `htpasswd -nB mesh` writes it.
GOOD = htpasswd_line("mesh", "peer-secret")


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
        "True", "ServingWithoutAuthentication")  # the fixture's server runs with --no-auth

    rest_server.stop()
    stopped = advertisement(host, NODE, OPEN)
    assert stopped.url is None and stopped.condition is not None
    assert stopped.condition[:2] == ("False", "NotAnswering") and rest_server.url in stopped.condition[2]

    write_config(host, "  backup_server:\n    enabled: false\n")
    had = {**NODE, "status": {**NODE["status"], "conditions": [{"type": CONDITION, "status": "True"}]}}
    withdrawn = advertisement(host, had, OPEN)
    assert withdrawn.url is None and withdrawn.condition is not None and withdrawn.condition[1] == "NotConfigured"


def test_the_warning_follows_what_the_server_does(tmp_path: Path, rest_server: RestServer) -> None:
    """config.yaml has users, but the server at url lets anyone in (an image whose unit predates
    authentication, say): the node is not reported as guarded."""
    host = tmp_path / "host"
    write_config(host, f"  backup_server:\n    url: {rest_server.url}\n    htpasswd: '{GOOD}'\n")
    ad = advertisement(host, NODE, OPEN)
    assert ad.url == rest_server.url and ad.condition is not None
    assert ad.condition[:2] == ("True", "ServingWithoutAuthentication")
    assert "htpasswd is set, but the server" in ad.condition[2] and "answers without credentials" in ad.condition[2]
    ad = advertisement(host, NODE, OPEN, guarded=lambda url: True)
    assert ad.condition is not None and ad.condition[1] == "Serving" and "htpasswd" in ad.condition[2]


def test_url_defaults_to_the_nodes_internal_ip_and_port() -> None:
    config: dict[str, Any] = {"maculaos": {"backup_server": {"port": 8100}}}
    assert server_setting(NodeConfig.tolerant(config), "10.0.3.7") is not None
    assert server_setting(NodeConfig.tolerant(config), "10.0.3.7").url == "http://10.0.3.7:8100"  # type: ignore[union-attr]
    ipv6 = server_setting(NodeConfig.tolerant({"maculaos": {"backup_server": {}}}), "fd00::7")
    assert ipv6 is not None and ipv6.url == "http://[fd00::7]:8000"
    assert server_setting(NodeConfig.tolerant({"maculaos": {}}), "10.0.3.7") is None


@pytest.mark.parametrize(("section", "named"), [
    ("  backup_server:\n    url: ftp://10.0.3.7\n", "maculaos.backup_server.url"),
    ("  backup_server:\n    port: 0\n", "maculaos.backup_server.port"),
    ("  backup_server:\n    port: 70000\n", "maculaos.backup_server.port"),
    ("  backup_server:\n    adress: http://10.0.3.7:8000\n", "maculaos.backup_server.adress"),
    ("  backup_server:\n    sources: [10.0.3.7/24]\n", "sources: entry 0 ('10.0.3.7/24') is not a network in CIDR"),
    ("  backup_server:\n    sources: [10.0.3.0/24, 10.0.0.0/33]\n", "sources: entry 1 ('10.0.0.0/33')"),
    ("  backup_server:\n    sources: [shop-lan]\n", "maculaos.backup_server.sources: entry 0 ('shop-lan')"),
    ("  backup_server:\n    sources: 10.0.3.0/24\n", "maculaos.backup_server.sources"),
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
    assert ad.url == rest_server.url and ad.condition is not None and ad.condition[1].startswith("Serving")

    write_maculaos_section(host_root, "backup_server", {"url": rest_server.url,
                                                         "sources": ["192.168.10.0/24", "fd00:10::/64"]})
    apply_mesh(host_root, plan_mesh({}), Systemd(host_root), netns_nft)
    table = subprocess.run([netns_nft, "list", "table", "inet", "maculaos"], capture_output=True, text=True).stdout
    assert f'ip saddr 192.168.10.0/24 tcp dport {port} accept comment "backup server"' in table, table
    assert f'ip6 saddr fd00:10::/64 tcp dport {port} accept comment "backup server"' in table, table
    assert f'\ttcp dport {port} accept' not in table  # no longer open to everyone
    assert blocked(port) is None  # open to the networks the user chose: advertised

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
    assert served_port(NodeConfig.tolerant({"maculaos": {"backup_server": section}})) == port
    assert served_port(NodeConfig.tolerant({"maculaos": {}})) is None
    assert served_port(NodeConfig.tolerant({"maculaos": "x"})) is None


def test_the_firewall_rule_pairs_the_port_with_the_admitted_networks() -> None:
    section = {"url": "http://10.0.3.7:9000/", "sources": ["10.0.3.0/24", "fd00::/64"]}
    assert served_rule(NodeConfig.tolerant({"maculaos": {"backup_server": section}})) == \
        (9000, ("10.0.3.0/24", "fd00::/64"))
    assert served_rule(NodeConfig.tolerant({"maculaos": {"backup_server": {"port": 8100}}})) == (8100, ())
    assert served_rule(NodeConfig.tolerant({"maculaos": {"backup_server": {"enabled": False}}})) is None


def install_image_unit(host_root: Path) -> Path:
    """The image's unit file and (a link to) the tests' rest-server as its binary, on a sandbox host."""
    unit_file = host_root / "usr/lib/systemd/system" / SERVICE
    shutil.copy(IMAGE_OVERLAY / "usr/lib/systemd/system" / SERVICE, unit_file)
    (host_root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (host_root / BINARY.lstrip("/")).symlink_to(default_bin_dir() / "rest-server")
    return unit_file


def unit_settings(unit_file: Path) -> dict[str, list[str]]:
    """Section.Key -> every value, in order (systemd keys may repeat, as ConditionPathExists= does)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in unit_file.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def unit_command(host_root: Path, credentials: Path) -> list[str]:
    """The unit's ExecStart as systemd runs it, per systemd.exec(5)/systemd.service(5): LoadCredential=
    copies each file into the credentials directory (%d); the EnvironmentFile= values replace ${VAR} (one
    word, whatever it holds) and a lone $VAR (split into words: none when empty)."""
    unit = unit_settings(host_root / "usr/lib/systemd/system" / SERVICE)
    env: dict[str, str] = {}
    for path in unit["Service.EnvironmentFile"]:
        for line in (host_root / path.lstrip("-/")).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip()
    credentials.mkdir()
    for spec in unit.get("Service.LoadCredential", []):
        name, _, source = spec.partition(":")
        shutil.copyfile(host_root / source.lstrip("/"), credentials / name)
        (credentials / name).chmod(0o400)
    (command,) = unit["Service.ExecStart"]
    argv: list[str] = []
    for word in shlex.split(command.replace("%d", str(credentials))):
        if lone := re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word):
            argv += shlex.split(env.get(lone[1], ""))
        else:
            argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m[1], ""), word))
    return argv


def start_unit_server(host_root: Path, tmp_path: Path, port: int) -> tuple[ProcessRecord, list[str]]:
    """Run exactly the unit's command, moved into the sandbox: the binary, the StateDirectory under the
    host root, and loopback instead of every address (a test listens on loopback only)."""
    argv = unit_command(host_root, tmp_path / "credentials")
    state = unit_settings(host_root / "usr/lib/systemd/system" / SERVICE)["Service.StateDirectory"][0]
    assert argv[0] == BINARY and argv[argv.index("--path") + 1] == f"/var/lib/{state}"
    assert argv[argv.index("--listen") + 1] == f":{port}"
    sandboxed = list(argv)
    sandboxed[0] = str(host_root / BINARY.lstrip("/"))
    sandboxed[argv.index("--path") + 1] = str(host_root / "var/lib" / state)
    sandboxed[argv.index("--listen") + 1] = f"127.0.0.1:{port}"
    proc, record = spawn("unit-rest-server", sandboxed, tmp_path / "logs")
    wait_for_port(port, 15, proc)
    return record, argv


def http_status(url: str, credentials: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url, method="POST" if url.endswith("?create=true") else "GET")
    if credentials:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def file_state(path: Path) -> tuple[bytes, int, int] | None:
    return (path.read_bytes(), path.stat().st_mode & 0o777, path.stat().st_mtime_ns) if path.exists() else None


def test_the_image_unit_serves_exactly_while_config_asks(host_root: Path, tmp_path: Path) -> None:
    """The image's maculaos-backup-server.service (from image-build/overlay) on a sandbox host: enabled by
    real `systemctl --root` with its port written only while config.yaml asks, disabled when it stops
    asking. Without htpasswd its ExecStart, run as systemd would, is a rest-server that lets anyone in
    (--no-auth: restic without credentials makes a repository), and the agent says so plainly."""
    unit_file = install_image_unit(host_root)
    systemd = Systemd(host_root)
    assert not converge_service(host_root, read_node_config(host_root), systemd)
    assert not systemd.is_enabled(SERVICE) and not (host_root / ENVIRONMENT).exists()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    write_maculaos_section(host_root, "backup_server", {"port": port, "url": url})
    assert converge_service(host_root, read_node_config(host_root), systemd)
    assert systemd.is_enabled(SERVICE) and f"LISTEN=:{port}\n" in (host_root / ENVIRONMENT).read_text()
    assert "AUTH=--no-auth\n" in (host_root / ENVIRONMENT).read_text()
    assert (host_root / HTPASSWD).stat().st_mode & 0o777 == 0o600  # LoadCredential= needs it, even empty
    assert not converge_service(host_root, read_node_config(host_root), systemd)  # nothing to do twice

    unit = unit_settings(unit_file)
    assert unit["Service.EnvironmentFile"] == [f"/{ENVIRONMENT}"]
    assert unit["Unit.ConditionPathExists"] == [f"/{ENVIRONMENT}", f"/{HTPASSWD}"]
    assert unit["Service.LoadCredential"] == [f"htpasswd:/{HTPASSWD}"]
    record, argv = start_unit_server(host_root, tmp_path, port)
    try:
        assert "--no-auth" in argv
        assert probe_rest_server(url) is None
        anyone = Restic(rest_repository(f"{url}/stranger", "pw"), str(default_bin_dir() / "restic"))
        assert anyone.ensure_initialized()  # no credentials, and the server made the repository
        ad = advertisement(host_root, NODE, OPEN)
        assert ad.url == url and ad.condition is not None
        assert ad.condition[:2] == ("True", "ServingWithoutAuthentication")
        (warning,) = backup_server_warnings(host_root)
        for said in (ad.condition[2], warning):
            assert "without authentication" in said and "anyone who reaches it can read, delete or fill" in said
            assert "maculaos.backup_server.htpasswd" in said and "credentialsSecretRef" in said
    finally:
        stop(record)

    write_maculaos_section(host_root, "backup_server", {"port": port, "enabled": False})
    assert converge_service(host_root, read_node_config(host_root), systemd) and not systemd.is_enabled(SERVICE)
    assert backup_server_warnings(host_root) == []


def test_the_image_unit_lets_in_only_the_htpasswd_users(host_root: Path, tmp_path: Path) -> None:
    """With maculaos.backup_server.htpasswd the agent writes the users root-only and AUTH empty; the unit's
    command then asks for them: restic with a user's password makes and fills a repository, with a wrong
    password or none it is refused (401) with a message naming credentialsSecretRef, and nothing is made."""
    install_image_unit(host_root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    users = "\n".join([htpasswd_line("mesh", "peer-secret"), "# the shop's NAS", htpasswd_line("nas", "nas-pw"), ""])
    write_maculaos_section(host_root, "backup_server", {"port": port, "url": url, "htpasswd": users})
    assert converge_service(host_root, read_node_config(host_root), Systemd(host_root))
    env = (host_root / ENVIRONMENT).read_text()
    assert "AUTH=\n" in env and "--no-auth" not in env.replace("# ", "")
    written = host_root / HTPASSWD
    assert written.stat().st_mode & 0o777 == 0o600
    assert [line for line in written.read_text().splitlines() if not line.startswith("#")] == [
        line for line in users.splitlines() if line and not line.startswith("#")]
    written.chmod(0o644)  # loosened behind the agent's back: tightened again
    assert converge_service(host_root, read_node_config(host_root), Systemd(host_root))
    assert written.stat().st_mode & 0o777 == 0o600

    record, argv = start_unit_server(host_root, tmp_path, port)
    try:
        assert "--no-auth" not in argv
        assert argv[argv.index("--htpasswd-file") + 1] == str(tmp_path / "credentials/htpasswd")
        assert http_status(f"{url}/") == 401 and http_status(f"{url}/", ("mesh", "peer-secret")) == 405
        assert probe_rest_server(url) is None  # a 401 is a rest-server's answer too
        restic = str(default_bin_dir() / "restic")
        node_root = tmp_path / "node"
        (node_root / "var/lib/data").mkdir(parents=True)
        (node_root / "var/lib/data/orders.csv").write_text("id,total\n1,9.50\n")
        good = Restic(rest_repository(f"{url}/macula-nuc-02", "repo-pw", "mesh:peer-secret"), restic)
        assert good.ensure_initialized()
        good.backup(node_root, ["/var/lib/data"], [], "macula-nuc-02", "mesh")
        assert len(good.snapshots()) == 1

        state = host_root / "var/lib/maculaos-backups"
        for credentials, said in (("mesh:wrong", "refused the credentials"),
                                  (None, "asks for credentials and the Backup gives none")):
            refused = Restic(rest_repository(f"{url}/macula-nuc-03", "repo-pw", credentials), restic)
            with pytest.raises(ResticError) as caught:
                refused.ensure_initialized()
            message = str(caught.value)
            assert caught.value.failure is ResticFailure.ACCESS_DENIED and "401" in message and said in message
            assert "mesh" in message and "credentialsSecretRef" in message
            assert "maculaos.backup_server.htpasswd" in message
            with pytest.raises(ResticError, match="401"):  # the existing repository is closed to it too
                Restic(rest_repository(f"{url}/macula-nuc-02", "repo-pw", credentials), restic).snapshots()
        assert not (state / "macula-nuc-03").exists() and (state / "macula-nuc-02/config").exists()

        ad = advertisement(host_root, NODE, OPEN)
        assert ad.url == url and ad.condition is not None and ad.condition[1] == "Serving"
        assert "asks for credentials, for the users of maculaos.backup_server.htpasswd" in ad.condition[2]
        assert backup_server_warnings(host_root) == []
    finally:
        stop(record)


def test_a_changed_htpasswd_or_mode_restarts_the_live_unit(host_root: Path, tmp_path: Path) -> None:
    """On a running system rest-server reads the users once (systemd hands it a copy at start), so the
    agent restarts the unit when the users or the mode change, as it does for a new port; never otherwise."""
    install_image_unit(host_root)
    systemctl = systemctl_over_root(tmp_path / "sd", host_root)
    live = Systemd(host_root, live=True, systemctl=str(systemctl))
    port = free_port()
    one = htpasswd_line("mesh", "one")

    def converge(section: dict[str, Any]) -> bool:
        write_maculaos_section(host_root, "backup_server", section)
        return converge_service(host_root, read_node_config(host_root), live)

    assert converge({"port": port, "htpasswd": one}) and live.is_enabled(SERVICE)
    assert restarts(systemctl, SERVICE) == 0  # enabled --now: it starts with these users
    assert not converge({"port": port, "htpasswd": one}) and restarts(systemctl, SERVICE) == 0
    assert converge({"port": port, "htpasswd": f"{one}\n{htpasswd_line('nas', 'two')}"})
    assert restarts(systemctl, SERVICE) == 1
    assert converge({"port": port}) and "AUTH=--no-auth" in (host_root / ENVIRONMENT).read_text()
    assert restarts(systemctl, SERVICE) == 2
    assert converge({"port": port, "htpasswd": one}) and restarts(systemctl, SERVICE) == 3
    assert converge({"port": port + 1, "htpasswd": one}) and restarts(systemctl, SERVICE) == 4
    assert not converge({"port": port + 1, "htpasswd": "mesh:not-a-hash"}) and restarts(systemctl, SERVICE) == 4


@pytest.mark.parametrize(("htpasswd", "said"), [
    ("mesh", "line 1: expected user:hash with no spaces"),
    ("mesh:peer-secret", "line 1: the password of mesh is not a bcrypt hash"),
    (f"{GOOD}\nnas:{{SHA}}qUqP5cyxm6YcTAhz05Hph5gvu9M=", "line 2: the password of nas is not a bcrypt hash"),
    (f"{GOOD}\nnas:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/", "line 2: the password of nas is not a bcrypt hash"),
    (f"# users\n\n{GOOD}\nn as:{GOOD.split(':', 1)[1]}", "line 4: expected user:hash with no spaces"),
    (f"nas/1:{GOOD.split(':', 1)[1]}", "line 1: user 'nas/1' may only have letters, digits and @ . _ -"),
    (f"{GOOD}\n{GOOD}", "line 2: user mesh is already on line 1"),
    ("# nobody yet\n", "has no user line"),
    ("", "has no user line"),
    (42, "Input should be a valid string"),
    ([GOOD], "Input should be a valid string"),
])
def test_bad_htpasswd_values_are_named_and_change_nothing(host_root: Path, tmp_path: Path, htpasswd: Any,
                                                          said: str) -> None:
    """A node serving to its users is given a bad htpasswd: the advertisement and the mesh pass name the key
    and the line, and the unit, its environment and its users stay as they were (its port closes to peers
    until the value is fixed: the firewall opens only what a valid section asks)."""
    install_image_unit(host_root)
    systemd = Systemd(host_root)
    port = free_port()
    write_maculaos_section(host_root, "backup_server", {"port": port, "htpasswd": GOOD})
    assert converge_service(host_root, read_node_config(host_root), systemd)
    before = {path: file_state(host_root / path) for path in (ENVIRONMENT, HTPASSWD)}

    write_maculaos_section(host_root, "backup_server", {"port": port + 1, "htpasswd": htpasswd})
    config = read_node_config(host_root)
    setting = server_setting(config, "10.0.3.7")
    assert setting is not None and setting.error is not None
    assert setting.error.startswith("maculaos.backup_server.htpasswd: ") and said in setting.error
    assert "Value error" not in setting.error and "$2b$" not in setting.error  # no hash echoed back
    ad = advertisement(host_root, NODE, OPEN, probe=lambda url: pytest.fail("probed a bad config"))
    assert ad.url is None and ad.condition is not None and ad.condition[:2] == ("False", "ConfigInvalid")
    assert "maculaos.backup_server.htpasswd: " in ad.condition[2] and said in ad.condition[2]
    (warning,) = backup_server_warnings(host_root)
    assert "left as they were" in warning and said in warning
    assert not converge_service(host_root, config, systemd)
    assert {path: file_state(host_root / path) for path in (ENVIRONMENT, HTPASSWD)} == before
    assert systemd.is_enabled(SERVICE) and served_port(config) is None


def test_htpasswd_lines_as_htpasswd_makes_them_are_taken(host_root: Path) -> None:
    """`htpasswd -nB` writes $2y$ (cost 5 by default) and a trailing blank line; YAML keeps trailing spaces."""
    line = htpasswd_line("shop-nas@macula.lan", "pw").replace(":$2b$", ":$2y$")  # the same bcrypt, its prefix
    section = {"htpasswd": f"{line}  \n\n{GOOD}\n", "url": "http://10.0.3.7:8000"}
    setting = server_setting(NodeConfig.tolerant({"maculaos": {"backup_server": section}}), None)
    assert setting is not None and setting.error is None and setting.authenticated


def test_the_mesh_pass_warns_while_the_server_is_open(host_root: Path, netns_nft: str) -> None:
    """The MeshRole entries of a node that serves without htpasswd carry the warning (where the pass
    already says a role's program is missing); with htpasswd they do not."""
    meshrole = {"metadata": {"generation": 1}, "spec": {}}
    write_maculaos_section(host_root, "backup_server", {"port": 8000})
    outcome = converge_mesh({"m": meshrole}, {}, host_root, Systemd(host_root), netns_nft, public_address=True)
    message = outcome.entries["m"]["message"]
    assert outcome.entries["m"]["phase"] == "Applied" and "runs without authentication" in message
    write_maculaos_section(host_root, "backup_server", {"port": 8000, "htpasswd": GOOD})
    outcome = converge_mesh({"m": meshrole}, {}, host_root, Systemd(host_root), netns_nft, public_address=True)
    assert "authentication" not in outcome.entries["m"]["message"]


def test_the_image_unit_passes_systemd_analyze_verify(host_root: Path) -> None:
    """systemd's own check of the unit (specifiers such as %d, LoadCredential=, the binary) on a root with
    the machine's systemd units (sysinit.target and friends)."""
    units = host_root / "usr/lib/systemd/system"
    shutil.copytree("/usr/lib/systemd/system", units, symlinks=True, dirs_exist_ok=True)
    shutil.copy(IMAGE_OVERLAY / "usr/lib/systemd/system" / SERVICE, units / SERVICE)
    (host_root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(default_bin_dir() / "rest-server", host_root / BINARY.lstrip("/"))
    result = subprocess.run(["systemd-analyze", "verify", f"--root={host_root}", SERVICE],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    (host_root / BINARY.lstrip("/")).unlink()  # the check is real: it sees what is missing
    result = subprocess.run(["systemd-analyze", "verify", f"--root={host_root}", SERVICE],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and BINARY in result.stderr


def test_the_unit_is_left_alone_on_a_host_without_the_server(host_root: Path) -> None:
    """The sandbox hosts and an image built without the tools profile: no binary, nothing enabled."""
    shutil.copy(IMAGE_OVERLAY / "usr/lib/systemd/system" / SERVICE, host_root / "usr/lib/systemd/system" / SERVICE)
    write_maculaos_section(host_root, "backup_server", {"port": 8000})
    assert not converge_service(host_root, read_node_config(host_root), Systemd(host_root))
    assert not Systemd(host_root).is_enabled(SERVICE)
