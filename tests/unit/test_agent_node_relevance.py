"""What wakes the agent's converge pass on its own Node: the decommission grant does (the agent must act on
it without waiting for the periodic resync), heartbeats and other annotations do not."""

from __future__ import annotations

import copy
from typing import Any

from maculaos.agent.watch import labels_and_addresses
from maculaos.api.decommission import GRANTED_ANNOTATION

NODE: dict[str, Any] = {"metadata": {"name": "n1", "labels": {"a": "b"}, "annotations": {"x": "1"}},
                        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                                   "conditions": [{"type": "Ready", "status": "True"}]}}


def changed(edit: Any) -> bool:
    other = copy.deepcopy(NODE)
    edit(other)
    return bool(labels_and_addresses(other) != labels_and_addresses(NODE))


def test_the_grant_wakes_the_agent() -> None:
    assert changed(lambda n: n["metadata"]["annotations"].update({GRANTED_ANNOTATION: "keep-data"}))


def test_heartbeats_and_other_annotations_do_not() -> None:
    assert not changed(lambda n: n["status"]["conditions"][0].update({"status": "False"}))
    assert not changed(lambda n: n["metadata"]["annotations"].update({"x": "2"}))
