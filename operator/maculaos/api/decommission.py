"""Decommissioning a node (seed 4.12.5): the annotations that carry it from the person to the operator to
the node's agent. The person sets DECOMMISSION; the operator cordons and drains the node, then sets
GRANTED; the agent schedules the factory reset, says so in RESET (the one of these it owns) and reboots;
the operator then deletes the Node object."""

from __future__ import annotations

#: Set by the person: keep-data (keep /var/lib/data) or all (wipe it too).
DECOMMISSION_ANNOTATION = "os.macula.io/decommission"
#: Set by the operator once the node is cordoned and drained: the mode the agent may reset with.
GRANTED_ANNOTATION = "os.macula.io/decommission-granted"
#: Set by the node's agent: the mode it scheduled, or "failed: <why>".
RESET_ANNOTATION = "os.macula.io/decommission-reset"
MODES = ("keep-data", "all")
FAILED_PREFIX = "failed: "


def valid_mode(value: str | None) -> bool:
    return value in MODES
