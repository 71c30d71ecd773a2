"""Operator and agents one release apart (docs/architecture.md, "Version skew"): what one writes for the
other is read even when a newer release added a key; a spec field an agent does not know is refused, and
the agent says which field and what to do."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from maculaos.agent.nodeupgrade import _grant, _target, not_acted_on
from maculaos.api.nodeupgrade import GrantAction, NodeUpgradeNodeEntry, NodeUpgradeSpec


def refusal(spec: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as caught:
        NodeUpgradeSpec.model_validate(spec)
    return not_acted_on(caught.value)


def test_a_field_the_agent_does_not_know_is_named_with_what_to_do() -> None:
    message = refusal({"version": "0.2.0", "source": {"url": "https://example.com/b.raucb"}, "judgeBy": {}})
    assert message.startswith("not acted on: spec.judgeBy: Extra inputs are not permitted (a field this node's "
                              "agent does not know: its OS is older than the operator's API;"), message


def test_a_bad_value_names_its_field_without_the_skew_hint() -> None:
    message = refusal({"version": "0.2.0", "source": {"url": "https://example.com/b.raucb"},
                       "healthCommitWindow": "soon"})
    assert message.startswith("not acted on: spec.healthCommitWindow: "), message
    assert "does not know" not in message


def test_grants_and_targets_with_a_key_a_newer_operator_added_are_still_acted_on() -> None:
    obj = {"status": {"grants": {"n1": {"action": "Install", "time": "2026-12-07T10:00:00Z", "deadline": "x"}},
                      "target": {"version": "0.3.0", "url": "https://example.com/b", "mirrors": ["a"]}}}
    grant, target = _grant(obj, "n1"), _target(obj)
    assert grant is not None and grant.action is GrantAction.INSTALL
    assert target is not None and target.version == "0.3.0"


def test_an_entry_whose_grant_reference_has_a_key_a_newer_agent_added_still_answers_its_grant() -> None:
    entry = NodeUpgradeNodeEntry.model_validate({"phase": "Installed", "observedGrant": {
        "uid": "u1", "action": "Install", "time": "2026-12-07T10:00:00Z", "attempt": 2}})
    assert entry.observed_grant is not None and entry.observed_grant.uid == "u1"
