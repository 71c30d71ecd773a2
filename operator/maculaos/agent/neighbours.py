"""The node's LAN neighbours in its NodeReport: every `lan_neighbours_seconds` the agent browses the
`_macula._tcp` services on the LAN (python-zeroconf, host/discover.py, as `maculaos discover` does) and
lists the other MaculaOS nodes it found. avahi on each node publishes its service; the agent only looks.
The agent runs on the host's network (hostNetwork), so it sees the node's LAN."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from maculaos.api.nodereport import MAX_NEIGHBOURS, LanNeighbour
from maculaos.host.nodeinfo import made_node_id

if TYPE_CHECKING:
    from maculaos.agent.nodereport import Reporter
    from maculaos.agent.settings import AgentSettings
    from maculaos.host.discover import Neighbour

log = logging.getLogger("maculaos.agent")
#: How long one look listens for answers (mDNS answers come within about a second).
BROWSE_SECONDS = 3.0


def neighbour_report(found: Iterable[Neighbour], own_names: set[str]) -> list[dict[str, Any]]:
    """LanNeighbour entries of what a look found, without this node itself (its node id or host name in
    own_names), sorted by node id: the same LAN gives the same list, and an unchanged list is not written."""
    entries = []
    for n in found:
        if n.node_id in own_names or n.host.removesuffix(".local") in own_names:
            continue
        entry = LanNeighbour(node_id=n.node_id[:253], host=n.host[:253], addresses=list(n.addresses[:16]),
                             version=n.version[:64], roles=list(n.roles[:16]), realm=n.realm[:253])
        entries.append(entry.model_dump(by_alias=True, mode="json"))
    return sorted(entries, key=lambda e: (e["nodeId"], e["host"]))[:MAX_NEIGHBOURS]


def watch_lan(settings: AgentSettings, reporter: Reporter, stop: threading.Event) -> None:
    """Look, report, wait; until stop. Each look opens its own mDNS sockets and closes them, so the list
    holds the nodes that answered now (a node switched off sends no goodbye; a kept cache would list it
    for the records' lifetime, over an hour), and nothing of zeroconf runs between looks. zeroconf is
    loaded here only: an agent that does not look never pays for it."""
    try:
        from maculaos.host.discover import discover
    except ImportError as exc:  # an install without python-zeroconf: everything else works on
        log.error(f"cannot look for LAN neighbours: {exc}")
        return
    own = {settings.node_name, socket.gethostname(), made_node_id(settings.host_root)} - {""}
    if stop.wait(min(settings.resync_seconds, settings.lan_neighbours_seconds)):
        return  # the first look waits a resync: a node just booted has its own work to do first
    while True:
        try:
            reporter.lan_neighbours(neighbour_report(discover(BROWSE_SECONDS), own))
        except Exception:  # a bad answer on the LAN must not end the looking
            log.exception("looking for LAN neighbours failed")
        if stop.wait(settings.lan_neighbours_seconds):
            return
