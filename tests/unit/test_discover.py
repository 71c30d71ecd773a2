"""`maculaos discover`: the TXT records of `_macula._tcp` services parsed from zeroconf's own ServiceInfo
objects, and one real registration on loopback browsed back; the agent's list of LAN neighbours."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from zeroconf import ServiceInfo, Zeroconf

from maculaos.agent.neighbours import neighbour_report
from maculaos.api.nodereport import LanNeighbour
from maculaos.cli import main
from maculaos.host.discover import SERVICE, discover, parse_service
from maculaos.host.nodeinfo import NodeInfo


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
        # Only its own: `make test`'s other lane may publish nodes on loopback at the same time.
        assert [(n.node_id, n.version, n.realm) for n in found if n.host == "macula-10c0ba11.local"] == \
            [("macula-10c0ba11", "0.4.0", "io.macula.test")]
    finally:
        zc.close()


def test_the_agents_neighbour_list_leaves_out_the_node_itself_and_is_sorted() -> None:
    found = [parse_service(service("MaculaOS shop-09", {"version": "0.4.0", "roles": "peer", "node-id": "macula-09"},
                                   server="shop-09.local.")),
             parse_service(service("MaculaOS macula-pi-03", {"version": "0.4.0"}, server="macula-pi-03.local.")),
             parse_service(service("MaculaOS shop-01", {"roles": "peer,bootstrap", "realm": "io.macula.shop",
                                                        "node-id": "macula-01"}, server="shop-01.local.")),
             parse_service(service("MaculaOS renamed", {"node-id": "macula-made"}, server="renamed.local."))]
    report = neighbour_report(found, {"macula-pi-03", "macula-made"})
    assert report == [
        {"nodeId": "macula-01", "host": "shop-01.local", "addresses": ["192.168.10.21"], "version": "unknown",
         "roles": ["peer", "bootstrap"], "realm": "io.macula.shop"},
        {"nodeId": "macula-09", "host": "shop-09.local", "addresses": ["192.168.10.21"], "version": "0.4.0",
         "roles": ["peer"], "realm": ""}]
    for entry in report:   # what the NodeReport's schema holds
        LanNeighbour.model_validate(entry)


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "86401"])
def test_a_bad_lan_neighbours_interval_stops_the_agent_before_it_starts(value: str, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before the agent reads a kubeconfig or touches the host (0 is the way to turn looking off)."""
    assert main(["agent", "run", "--node-name=macula-pi-03", f"--host-root={tmp_path}",
                 f"--lan-neighbours-seconds={value}"]) == 2
    err = capsys.readouterr().err
    assert "--lan-neighbours-seconds:" in err and "between 0 (never look) and 86400" in err, err
