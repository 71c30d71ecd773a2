"""`maculaos discover`: the MaculaOS nodes on this LAN, from their mDNS `_macula._tcp` services (avahi
publishes them from host/nodeinfo.py's service file), browsed with python-zeroconf."""

from __future__ import annotations

import time
from dataclasses import dataclass

from zeroconf import ServiceBrowser, ServiceInfo, ServiceListener, Zeroconf

SERVICE = "_macula._tcp.local."


@dataclass(frozen=True)
class Neighbour:
    name: str
    """The service's instance name (MaculaOS <hostname>)."""
    host: str
    addresses: tuple[str, ...]
    port: int
    version: str
    roles: tuple[str, ...]
    realm: str
    node_id: str
    """The TXT record's node-id, else the host name without .local."""

    def line(self) -> str:
        return (f"{self.node_id:<20} {','.join(self.addresses) or '-':<18} {self.version:<12} "
                f"{','.join(self.roles) or 'peer':<22} {self.realm or '-'}")


def _text(properties: dict[bytes, bytes | None], key: str) -> str:
    value = properties.get(key.encode())
    return value.decode("utf-8", "replace") if value else ""


def parse_service(info: ServiceInfo) -> Neighbour:
    """A node from its service: TXT version, roles (comma-separated), realm and node-id."""
    properties = info.properties
    host = (info.server or "").rstrip(".")
    instance = info.name.removesuffix("." + SERVICE)
    roles = tuple(r for r in _text(properties, "roles").split(",") if r)
    return Neighbour(name=instance, host=host, addresses=tuple(info.parsed_scoped_addresses()), port=info.port or 0,
                     version=_text(properties, "version") or "unknown", roles=roles,
                     realm=_text(properties, "realm"),
                     node_id=_text(properties, "node-id") or host.removesuffix(".local"))


class _Collector(ServiceListener):
    def __init__(self) -> None:
        self.names: set[str] = set()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.add(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.add(name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.discard(name)


def discover(timeout: float = 5.0, zeroconf: Zeroconf | None = None) -> list[Neighbour]:
    """Browse for timeout seconds; every node that answered, sorted by node id."""
    zc = zeroconf or Zeroconf()
    try:
        collector = _Collector()
        browser = ServiceBrowser(zc, SERVICE, collector)
        time.sleep(timeout)
        browser.cancel()
        found = []
        for name in sorted(collector.names):
            info = zc.get_service_info(SERVICE, name, timeout=2000)
            if info is not None:
                found.append(parse_service(info))
        return sorted(found, key=lambda n: n.node_id)
    finally:
        if zeroconf is None:
            zc.close()
