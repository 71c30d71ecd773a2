"""`maculaos diag`: pass/fail lines from a sandbox host root, bounded in time against addresses that never
answer, a non-zero exit when a check fails, real RAUC slot states, and a support bundle without secrets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from maculaos.devenv.rauc import SimulatedRaucNode
from maculaos.host.config import config_file
from maculaos.host.diag import ProbeTimeout, bounded
from maculaos.host.diag_bundle import redact, scrub

TOKEN = "abcdef.0123456789abcdef"
PASSWORD_HASH = "$6$saltsalt$Qm9vYmFyYmF6cXV4cXV1eHNlY3JldGhhc2g"
HTPASSWD = "peer:$2y$05$htpasswdsecretvalue0123456789"
URL_PASSWORD = "urlpassw0rd"
CA = "-----BEGIN CERTIFICATE-----\nTUFDVUxBT1NURVNUQ0E=\n-----END CERTIFICATE-----\n"


def diag(host_root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "maculaos", "diag", *args, f"--host-root={host_root}",
                           "--rauc=/nonexistent/rauc"], capture_output=True, text=True, timeout=timeout)


def write_config(host_root: Path, maculaos: dict[str, object], **top: object) -> None:
    config = yaml.safe_load(config_file(host_root).read_text())
    config["maculaos"].update(maculaos)
    config.update(top)
    config_file(host_root).write_text(yaml.safe_dump(config))


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_bounded_gives_up_on_a_probe_that_hangs() -> None:
    started = time.monotonic()
    with pytest.raises(ProbeTimeout, match="no answer within 0.5 s"):
        bounded(lambda: time.sleep(30), 0.5)
    assert time.monotonic() - started < 2
    assert bounded(lambda: 42, 1) == 42
    with pytest.raises(ZeroDivisionError):  # the probe's own error reaches the caller
        bounded(lambda: 1 // 0, 1)


@pytest.fixture
def dead_network(tmp_path: Path) -> Iterator[list[str]]:
    """A network namespace whose default route leads to a neighbour that never answers (a veth whose
    other end has no address, the neighbour's MAC made permanent): a SYN or a DNS query is sent and never
    answered, the cut cable the checks must survive. Yields the command prefix that runs in it."""
    name = f"maculaos-diag-{tmp_path.name[-12:]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "sh", "-ec", "ip link set lo up; "
                        "ip link add v0 type veth peer name v1; ip addr add 10.254.0.2/16 dev v0; ip link set v0 up; "
                        "ip link set v1 up; ip neigh add 10.254.0.1 lladdr 02:00:00:00:00:01 dev v0 nud permanent; "
                        "ip route add default via 10.254.0.1 dev v0"], check=True)
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_cut_network_fails_within_bounded_time(host_root: Path, closed_port: int, dead_network: list[str]) -> None:
    """Peers and a server that never answer (10.255.255.1, a name no DNS server answers for) and a closed
    port: "unreachable" lines, the section within a few probe times, exit code 1."""
    write_config(host_root, {
        "mesh": {"bootstrap_peers": ["https://10.255.255.1:443", f"https://127.0.0.1:{closed_port}"]},
        "kubernetes": {"server": "https://api.macula.test:6443", "ca_cert": CA, "token": TOKEN}})
    started = time.monotonic()
    result = subprocess.run([*dead_network, sys.executable, "-m", "maculaos", "diag", "network", "--timeout=1",
                             f"--host-root={host_root}"], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert elapsed < 6, f"diag network took {elapsed:.1f} s:\n{result.stdout}"
    lines = result.stdout.splitlines()
    assert "FAIL network: bootstrap peer https://10.255.255.1:443: unreachable (10.255.255.1:443: no answer within " \
           "1 s)" in lines, result.stdout
    assert f"FAIL network: bootstrap peer https://127.0.0.1:{closed_port}: unreachable (127.0.0.1:{closed_port}: " \
           "Connection refused)" in lines
    assert "FAIL network: dns: api.macula.test: unreachable (no answer within 1 s)" in lines
    assert any(line.startswith("FAIL network: API server https://api.macula.test:6443: unreachable") for line in lines)
    assert "PASS network: interface v0: up, 10.254.0.2/16" in lines
    assert "PASS network: default gateway: 10.254.0.1 via v0" in lines


def test_a_peer_that_answers_passes(host_root: Path, listening_port: int) -> None:
    write_config(host_root, {"mesh": {"bootstrap_peers": [f"https://127.0.0.1:{listening_port}"]}})
    result = diag(host_root, "network", "--timeout=2")
    assert f"PASS network: bootstrap peer https://127.0.0.1:{listening_port}: 127.0.0.1:{listening_port} answers" \
        in result.stdout.splitlines(), result.stdout


def test_mesh_passes_with_a_good_config_and_fails_with_a_bad_one(host_root: Path) -> None:
    write_config(host_root, {"mesh": {"roles": {"gateway": True}, "realm": "io.macula.shop"}})
    result = diag(host_root, "mesh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS mesh: roles: peer, gateway" in result.stdout
    assert "PASS mesh: realm: io.macula.shop (tls development)" in result.stdout
    write_config(host_root, {"mesh": {"roles": {"gateway": "maybe"}}})
    result = diag(host_root, "mesh")
    assert result.returncode == 1
    assert "FAIL mesh: roles:" in result.stdout and "maculaos.mesh.roles.gateway must be true or false" in result.stdout
    config_file(host_root).unlink()
    result = diag(host_root, "mesh")
    assert result.returncode == 1 and "is missing: the node is unconfigured" in result.stdout


def test_bad_arguments_are_refused(host_root: Path) -> None:
    result = diag(host_root, "disks")
    assert result.returncode == 2 and "no section 'disks' (choose from network, storage, mesh)" in result.stderr
    result = diag(host_root, "mesh", "--timeout=0")
    assert result.returncode == 1 and "--timeout must be a positive number of seconds, not 0" in result.stderr


def test_storage_without_rauc_says_unavailable(host_root: Path) -> None:
    result = diag(host_root, "storage")
    assert "SKIP storage: A/B slots: unavailable:" in result.stdout
    assert f"storage: data partition: {host_root}/var/lib/maculaos is on " in result.stdout
    assert any(line.startswith(("PASS storage: data usage: ", "FAIL storage: data usage: "))
               for line in result.stdout.splitlines())
    assert "storage: SMART" in result.stdout


def test_storage_reads_the_slots_from_real_rauc(rauc_node: SimulatedRaucNode) -> None:
    root = rauc_node.host_root
    (root / "var/lib/maculaos").mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "maculaos", "diag", "storage", f"--host-root={root}",
                             f"--rauc={rauc_node.rauc_command}"], capture_output=True, text=True, timeout=60,
                            env=os.environ | {"DBUS_SYSTEM_BUS_ADDRESS": rauc_node.layout.bus_address})
    lines = result.stdout.splitlines()
    assert "PASS storage: slot A (rootfs.0): booted, boot good, version unknown, running, boots next" in lines, \
        result.stdout + result.stderr
    assert "PASS storage: slot B (rootfs.1): inactive, boot bad, version unknown" in lines
    assert "config.yaml" not in result.stdout  # a storage check needs none


def test_the_support_bundle_holds_no_secret(host_root: Path, tmp_path: Path, closed_port: int) -> None:
    server = f"https://127.0.0.1:{closed_port}"
    write_config(host_root, {
        "kubernetes": {"server": server, "ca_cert": CA, "token": TOKEN},
        "backup_server": {"htpasswd": HTPASSWD, "url": f"https://backup:{URL_PASSWORD}@nas.shop:8000/"}},
        password_hash=PASSWORD_HASH, ssh_authorized_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyMaterial admin"])
    state = host_root / "var/lib/maculaos/upgrade/state.json"
    state.parent.mkdir(parents=True)
    state.write_text(f'{{"phase": "Idle", "leaked": "joined with {TOKEN}"}}\n')
    result = diag(host_root, "--full", "--timeout=1", f"--output-dir={tmp_path / 'out'}")
    path = Path(result.stdout.splitlines()[-1].removeprefix("support bundle: "))
    assert path.parent == tmp_path / "out" and path.stat().st_mode & 0o077 == 0, result.stdout + result.stderr
    with tarfile.open(path) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert {"config.yaml", "diag.txt", "slots.json", "journal.txt",
            "state/var/lib/maculaos/upgrade/state.json"} <= set(files)
    for name, text in files.items():
        for secret in (TOKEN, PASSWORD_HASH, HTPASSWD, "htpasswdsecretvalue", URL_PASSWORD, "AAAAC3NzaC1lZDI1NTE5"):
            assert secret not in text, f"{secret} in {name}"
    config = yaml.safe_load(files["config.yaml"])
    assert config["maculaos"]["kubernetes"]["token"] == "<removed>" and config["password_hash"] == "<removed>"
    assert config["maculaos"]["kubernetes"]["server"] == server  # what helps is kept
    assert config["maculaos"]["backup_server"]["url"] == "https://<removed>@nas.shop:8000/"
    assert config["maculaos"]["hostname"] == "macula-nuc-01"
    assert "joined with <removed>" in files["state/var/lib/maculaos/upgrade/state.json"]
    assert f"FAIL network: API server {server}: unreachable" in files["diag.txt"]


def test_redact_and_scrub() -> None:
    secrets: set[str] = set()
    raw = {"a": {"token": "t0k3n-value", "keys": ["k1-secret"], "name": "kept", "port": 8000,
                 "url": "s3://AKIAID:s3cr3tkey@host/bucket", "enabled": True}}
    assert redact(raw, secrets) == {"a": {"token": "<removed>", "keys": ["<removed>"], "name": "kept",
                                          "port": 8000, "url": "s3://<removed>@host/bucket", "enabled": True}}
    assert secrets == {"t0k3n-value", "k1-secret", "AKIAID:s3cr3tkey"}
    assert scrub("log: t0k3n-value and s3cr3tkey, kept", secrets) == "log: <removed> and <removed>, kept"
