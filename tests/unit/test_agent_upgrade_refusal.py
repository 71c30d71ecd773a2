"""What an agent says when it cannot read a NodeUpgrade's spec: the field, and for a field it does not know
(an operator's API newer than the node's agent) what to do."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from maculaos.agent.nodeupgrade import not_acted_on
from maculaos.api.nodeupgrade import NodeUpgradeSpec


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
