"""`maculaos discover`: the TXT records of `_macula._tcp` services parsed from zeroconf's own ServiceInfo
objects, and one real registration on loopback browsed back."""

from __future__ import annotations

import socket

import pytest
from zeroconf import ServiceInfo, Zeroconf

from maculaos.host.nodeinfo import NodeInfo
from maculaos.wizard.discover import SERVICE, discover, parse_service


def service(name: str, properties: dict[str, str | None], server: str = "macula-1a2b3c4d.local.") -> ServiceInfo:
    return ServiceInfo(SERVICE, f"{name}.{SERVICE}", port=6443, properties=properties, server=server,
                       addresses=[socket.inet_aton("192.168.10.21")])


def test_the_txt_records_are_parsed() -> None:
    node = parse_service(service("MaculaOS macula-1a2b3c4d", {
        "version": "0.4.0", "roles": "peer,bootstrap", "realm": "io.macula.shop", "node-id": "node-7", "k3s": "no"}))
    assert (node.name, node.host, node.addresses, node.port) == \
        ("MaculaOS macula-1a2b3c4d", "macula-1a2b3c4d.local", ("192.168.10.21",), 6443)
    assert (node.version, node.roles, node.realm, node.node_id) == \
        ("0.4.0", ("peer", "bootstrap"), "io.macula.shop", "node-7")
    assert "node-7" in node.line() and "peer,bootstrap" in node.line()


def test_missing_records_have_plain_defaults_and_the_node_id_is_the_host_name() -> None:
    node = parse_service(service("MaculaOS macula-ffff0000", {"roles": "", "realm": None},
                                 server="macula-ffff0000.local."))
    assert (node.version, node.roles, node.realm, node.node_id) == ("unknown", (), "", "macula-ffff0000")


def test_what_node_info_advertises_is_what_discover_reads() -> None:
    info = NodeInfo(version="0.4.0", arch="amd64", realm="io.macula.shop", roles=("peer", "gateway"), k3s=False,
                    node_id="macula-1a2b3c4d")
    xml = info.avahi_service()
    records = dict(r.split("=", 1) for r in
                   (line.strip().removeprefix("<txt-record>").removesuffix("</txt-record>")
                    for line in xml.splitlines() if "<txt-record>" in line))
    node = parse_service(service("MaculaOS shop-01", dict(records), server="shop-01.local."))
    assert (node.version, node.roles, node.realm, node.node_id) == \
        ("0.4.0", ("peer", "gateway"), "io.macula.shop", "macula-1a2b3c4d")


def test_a_node_registered_on_loopback_is_discovered() -> None:
    try:
        zc = Zeroconf(interfaces=["127.0.0.1"])
    except OSError as exc:  # no multicast on this machine's loopback
        pytest.skip(f"no mDNS on loopback here: {exc}")
    try:
        info = ServiceInfo(SERVICE, f"MaculaOS macula-10c0ba11.{SERVICE}", port=6443, server="macula-10c0ba11.local.",
                           addresses=[socket.inet_aton("127.0.0.1")],
                           properties={"version": "0.4.0", "roles": "peer", "realm": "io.macula.test"})
        zc.register_service(info, allow_name_change=True)
        found = discover(timeout=2.0, zeroconf=zc)
        assert [(n.node_id, n.version, n.realm) for n in found] == [("macula-10c0ba11", "0.4.0", "io.macula.test")]
    finally:
        zc.close()
