"""`maculaos diag` (seed 4.10.4): checks that say pass or fail in one line each, every one bounded in
time, so a node with its network cut still answers, within seconds, what is wrong. The sections live in
diag_network, diag_storage and here (mesh); the support bundle in diag_bundle."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from maculaos.host.config import HostConfigError, config_file
from maculaos.host.nodeconfig import NodeConfig, read_node_config

T = TypeVar("T")

#: Seconds one probe (a connection, a name lookup, a command) may take before it counts as no answer.
PROBE_SECONDS = 3.0


class Section(StrEnum):
    NETWORK = "network"
    STORAGE = "storage"
    MESH = "mesh"


class Status(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    """Not checkable here (no smartctl, RAUC unavailable): said, not counted as a failure."""


@dataclass(frozen=True)
class Check:
    section: Section
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status.value} {self.section.value}: {self.name}: {self.detail}"


class ProbeTimeout(Exception):
    """A probe gave no answer within its time."""


def bounded(probe: Callable[[], T], seconds: float) -> T:
    """probe() in a daemon thread, given up after seconds (ProbeTimeout): a name lookup or a connection
    the kernel keeps trying never holds the command. The thread is left to end on its own."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(probe())
        except BaseException as exc:  # carried to the caller
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="diag-probe")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ProbeTimeout(f"no answer within {seconds:g} s")
    if error:
        raise error[0]
    return result[0]


def read_config_for_diag(host_root: Path) -> tuple[NodeConfig | None, Check | None]:
    """config.yaml read tolerantly, or None and the failing line when it is missing or unreadable."""
    if not config_file(host_root).exists():
        return None, Check(Section.MESH, "config.yaml", Status.FAIL,
                           f"{config_file(host_root)} is missing: the node is unconfigured (first-boot mode)")
    try:
        return read_node_config(host_root), None
    except HostConfigError as exc:
        return None, Check(Section.MESH, "config.yaml", Status.FAIL, str(exc))


def check_mesh(config: NodeConfig | None) -> list[Check]:
    """The roles config.yaml gives this node, and what is wrong with its mesh keys."""
    if config is None:
        return [Check(Section.MESH, "roles", Status.SKIP, "unknown without a usable config.yaml")]
    problem = config.problem("maculaos.mesh") or config.problem("maculaos")
    if problem:
        return [Check(Section.MESH, "roles", Status.FAIL, f"{config.source}: {problem}")]
    mesh = config.maculaos.mesh
    roles = ["peer", *sorted(r.value for r in mesh.roles_on())] if mesh else ["peer"]
    checks = [Check(Section.MESH, "roles", Status.PASS, ", ".join(roles))]
    peers = mesh.bootstrap_peers if mesh else []
    checks.append(Check(Section.MESH, "bootstrap peers", Status.PASS if peers else Status.SKIP,
                        ", ".join(peers) if peers else "none configured (discovery over mDNS only)"))
    if mesh:
        checks.append(Check(Section.MESH, "realm", Status.PASS, f"{mesh.realm} (tls {mesh.tls_mode.value})"))
    return checks


def failed(checks: Iterable[Check]) -> bool:
    return any(c.status is Status.FAIL for c in checks)
