"""Status conditions in the metav1.Condition style: a transition time that only moves when status does."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from maculaos.api.common import ConditionStatus, ConditionType
from maculaos.api.times import now_rfc3339
from maculaos.controller.validation import Problem, Verdict


@dataclass(frozen=True)
class EventNote:
    """An Event the controller owes an object, decided by pure code and posted by the caller."""

    type: str
    reason: str
    message: str

def merge_condition(existing: Iterable[Mapping[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Replace the condition of new['type'], keeping lastTransitionTime when its status did not change."""
    out: list[dict[str, Any]] = []
    for cond in existing:
        if cond.get("type") != new["type"]:
            out.append(dict(cond))
        elif cond.get("status") == new["status"] and cond.get("lastTransitionTime"):
            new = {**new, "lastTransitionTime": cond["lastTransitionTime"]}
    new.setdefault("lastTransitionTime", now_rfc3339())
    out.append(new)
    return sorted(out, key=lambda c: str(c.get("type")))


def _condition(ctype: ConditionType, status: ConditionStatus, reason: str, message: str,
               generation: int) -> dict[str, Any]:
    return {"type": ctype.value, "status": status.value, "reason": reason, "message": message,
            "observedGeneration": generation}


def summarize_problems(problems: list[Problem]) -> tuple[str, str]:
    """(reason, message) for a list of problems: the first problem's reason, every message."""
    return problems[0].reason, "; ".join(str(p) for p in problems)


def verdict_conditions(existing: Iterable[Mapping[str, Any]], verdict: Verdict,
                       generation: int) -> list[dict[str, Any]]:
    """The Ready and Invalid conditions that follow from a verdict."""
    if verdict.valid:
        count = len(verdict.matched_nodes)
        message = f"accepted; selects {count} node(s)" if verdict.matched_nodes else "accepted"
        ready = _condition(ConditionType.READY, ConditionStatus.TRUE, "Accepted", message, generation)
        invalid = _condition(ConditionType.INVALID, ConditionStatus.FALSE, "Valid", "", generation)
    else:
        reason, message = summarize_problems(verdict.problems)
        ready = _condition(ConditionType.READY, ConditionStatus.FALSE, reason, message, generation)
        invalid = _condition(ConditionType.INVALID, ConditionStatus.TRUE, reason, message, generation)
    conditions = merge_condition(existing, ready)
    return merge_condition(conditions, invalid)


def warning_condition(risks: list[Problem], generation: int) -> dict[str, Any]:
    """Warning: True while the accepted spec carries a risk a person should know of (risks.py)."""
    if not risks:
        return _condition(ConditionType.WARNING, ConditionStatus.FALSE, "NoKnownRisk", "", generation)
    reason, message = summarize_problems(risks)
    return _condition(ConditionType.WARNING, ConditionStatus.TRUE, reason, message, generation)
