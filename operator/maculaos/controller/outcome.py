"""The Outcome column: what the selected nodes made of an object, in a few words next to Ready (which
says only that the operator accepted the object). Counted from the nodes' entries in status.nodes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def tally(done: int, of: int, verb: str, failed: int = 0, failed_word: str = "failed", busy: int = 0,
          busy_word: str = "in progress") -> str:
    """`2/3 upgraded, 1 failed, 1 disrupted`: the parts that are zero are left out (but never done/of)."""
    parts = [f"{done}/{of} {verb}"]
    parts += [f"{n} {word}" for n, word in ((failed, failed_word), (busy, busy_word)) if n]
    return ", ".join(parts)


def rollout_outcome(matched: int, upgraded: int, failed: int, disrupted: int, refused: int = 0) -> str:
    """refused: nodes whose agent cannot act on the spec (the NotActedOn condition says why)."""
    text = tally(upgraded, matched, "upgraded", failed, busy=disrupted, busy_word="disrupted")
    return f"{text}, {refused} not acted on" if refused else text


def _entries(status: Mapping[str, Any], nodes: Sequence[str]) -> list[Mapping[str, Any]]:
    entries = status.get("nodes") or {}
    return [entries[n] for n in nodes if isinstance(entries.get(n), dict)]


def _count(entries: Sequence[Mapping[str, Any]], *phases: str) -> int:
    return sum(e.get("phase") in phases for e in entries)


def object_outcome(kind: str, fields: Mapping[str, Any], status: Mapping[str, Any],
                   matched: Sequence[str]) -> str | None:
    """The outcome of a MeshRole, HealthCheck or Backup from the fields judged this pass (fields) and the
    nodes' entries (status); None for the kinds that work theirs out elsewhere (NodeUpgrade, Restore)."""
    entries = _entries(status, matched)
    if kind == "MeshRole":
        return tally(int(fields.get("appliedNodes", 0)), len(matched), "applied",
                     _count(entries, "Failed", "Conflict", "Invalid"))
    if kind == "HealthCheck":
        return tally(int(fields.get("healthyNodes", 0)), len(matched), "healthy",
                     _count(entries, "Unhealthy", "Failed", "Invalid"), "unhealthy")
    if kind == "Backup":
        succeeded = sum(bool(e.get("lastSuccessTime")) for e in entries)
        return tally(succeeded, len(matched), "backed up", _count(entries, "Failed", "Invalid"),
                     busy=_count(entries, "Running"), busy_word="running")
    return None


def restore_outcome(targets: Sequence[str], entries: Mapping[str, Mapping[str, Any]], one_node: bool) -> str:
    """One node's phase (`macula-nuc-01: Succeeded`), or how many of the nodes are restored."""
    phases = [str(entries.get(n, {}).get("phase") or "Pending") for n in targets]
    if one_node and len(targets) == 1:
        return f"{targets[0]}: {phases[0]}"
    return tally(phases.count("Succeeded"), len(targets), "restored", phases.count("Failed"),
                 busy=phases.count("Running"), busy_word="running")
