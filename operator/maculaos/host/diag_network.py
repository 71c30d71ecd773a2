"""`maculaos diag network`: the interfaces, the default route, DNS, and whether the bootstrap peers and the
cluster's API server answer, each probe bounded (diag.bounded), so a cut cable gives "unreachable", not a
hang. Interfaces and routes are the running kernel's (`ip -j`); the peers and the server come from
config.yaml under the host root."""

from __future__ import annotations

import json
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from maculaos.api.addresses import is_ip_address
from maculaos.host.diag import Check, ProbeTimeout, Section, Status, bounded
from maculaos.host.nodeconfig import NodeConfig

#: A name looked up when config.yaml names no host to resolve (the project's own domain).
FALLBACK_NAME = "macula.io"
DEFAULT_PORTS = {"https": 443, "quic": 443}


def _ip_json(*args: str, seconds: float) -> list[dict[str, Any]]:
    result = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=seconds)
    if result.returncode != 0:
        raise OSError(result.stderr.strip() or f"ip exited with {result.returncode}")
    return list(json.loads(result.stdout or "[]"))


def check_interfaces(seconds: float) -> list[Check]:
    """One line per interface but loopback; a fail when none is up with an address."""
    try:
        links = _ip_json("addr", "show", seconds=seconds)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return [Check(Section.NETWORK, "interfaces", Status.FAIL, f"cannot list them: {exc}")]
    checks = [interface_line(link) for link in links if "LOOPBACK" not in link.get("flags", [])]
    if not any(c.status is Status.PASS for c in checks):
        checks.append(Check(Section.NETWORK, "interfaces", Status.FAIL, "no interface is up with an address"))
    return checks


def interface_line(link: dict[str, Any]) -> Check:
    """Down by choice: SKIP; up without carrier (a cable out), or without an address (and no bridge
    above it): FAIL."""
    name, flags = f"interface {link.get('ifname')}", link.get("flags", [])
    addresses = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") != "link"]
    if "UP" not in flags:
        return Check(Section.NETWORK, name, Status.SKIP, "administratively down")
    if "LOWER_UP" not in flags:
        return Check(Section.NETWORK, name, Status.FAIL, "no carrier (cable or link down)")
    if link.get("master"):
        return Check(Section.NETWORK, name, Status.PASS, f"up, in {link['master']}")
    return Check(Section.NETWORK, name, Status.PASS if addresses else Status.FAIL,
                 f"up, {', '.join(addresses) or 'no address'}")


def check_gateway(seconds: float) -> Check:
    try:
        routes = _ip_json("route", "show", "default", seconds=seconds)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return Check(Section.NETWORK, "default gateway", Status.FAIL, f"cannot read the routes: {exc}")
    if not routes:
        return Check(Section.NETWORK, "default gateway", Status.FAIL, "no default route")
    route = routes[0]
    return Check(Section.NETWORK, "default gateway", Status.PASS,
                 f"{route.get('gateway', 'direct')} via {route.get('dev', '?')}")


def endpoints(config: NodeConfig | None) -> list[tuple[str, str, int]]:
    """(what, host, port) to probe: each bootstrap peer, then the API server of maculaos.kubernetes."""
    if config is None:
        return []
    found = []
    mesh = config.maculaos.mesh
    for url in mesh.bootstrap_peers if mesh else []:
        parts = urlsplit(url)
        found.append((f"bootstrap peer {url}", parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme]))
    kubernetes = config.maculaos.kubernetes
    if kubernetes is not None:
        parts = urlsplit(kubernetes.server)
        found.append((f"API server {kubernetes.server}", parts.hostname or "", parts.port or 443))
    return found


def check_dns(config: NodeConfig | None, seconds: float) -> Check:
    """A lookup of the first host name config.yaml names (else FALLBACK_NAME)."""
    names = [host for _, host, _ in endpoints(config) if host and not is_ip_address(host)]
    name = names[0] if names else FALLBACK_NAME
    try:
        infos = bounded(lambda: socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP), seconds)
    except ProbeTimeout as exc:
        return Check(Section.NETWORK, "dns", Status.FAIL, f"{name}: unreachable ({exc})")
    except OSError as exc:
        return Check(Section.NETWORK, "dns", Status.FAIL, f"{name}: does not resolve ({exc})")
    return Check(Section.NETWORK, "dns", Status.PASS, f"{name} is {infos[0][4][0]}")


def probe_tcp(what: str, host: str, port: int, seconds: float) -> Check:
    """A TCP connection to host:port, the lookup included, within seconds."""
    def connect() -> None:
        with socket.create_connection((host, port), timeout=seconds):
            pass
    try:
        bounded(connect, seconds)
    except (ProbeTimeout, TimeoutError) as exc:
        return Check(Section.NETWORK, what, Status.FAIL, f"unreachable ({host}:{port}: {exc or 'timed out'})")
    except OSError as exc:
        return Check(Section.NETWORK, what, Status.FAIL, f"unreachable ({host}:{port}: {exc.strerror or exc})")
    return Check(Section.NETWORK, what, Status.PASS, f"{host}:{port} answers")


def check_network(config: NodeConfig | None, seconds: float) -> list[Check]:
    """Every network line; the probes run side by side, so the section takes about one probe's time."""
    targets = endpoints(config)
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        reach = [pool.submit(probe_tcp, what, host, port, seconds) for what, host, port in targets]
        checks = [*check_interfaces(seconds), check_gateway(seconds), check_dns(config, seconds)]
        checks += [f.result() for f in reach]
    if not targets:
        checks.append(Check(Section.NETWORK, "peers and API server", Status.SKIP,
                            "config.yaml names no bootstrap peer and no API server"))
    return checks
