"""The pure parts of node reports: merge patches (the agent's diff of its report, the operator's fold into
status.nodes), report keys, and which entries a fold shows on an object."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from maculaos.agent.nodereport import Reporter
from maculaos.api.nodereport import parse_report_key, report_key
from maculaos.controller.fold import DEBOUNCE_SECONDS, MAX_DELAY_SECONDS, Folder, folded_nodes, nodes_patch
from maculaos.controller.handlers import fold_forever
from maculaos.kube.rest import Credentials, KubeClient, apply_merge_patch, merge_patch

OLD = {"a": {"phase": "Applied", "message": "ok", "progress": 40}, "b": {"phase": "Failed"}, "c": [1, 2]}


@pytest.mark.parametrize("new", [
    OLD,
    {},
    {"a": {"phase": "Applied", "message": "ok"}},                 # a key dropped inside an entry
    {"a": {"phase": "Applied", "message": "ok", "progress": 40}, "d": {"x": {}}},
    {"a": "now a string", "b": {"phase": "Failed"}, "c": [2]},   # type changes and list replaced whole
])
def test_merge_patch_turns_old_into_new(new: dict[str, Any]) -> None:
    patch = merge_patch(OLD, new)
    assert apply_merge_patch(OLD, patch) == new
    assert (patch == {}) == (new == OLD)


def test_merge_patch_is_minimal() -> None:
    assert merge_patch(OLD, {**OLD, "a": {**OLD["a"], "progress": 45}}) == {"a": {"progress": 45}}
    assert merge_patch(OLD, {"a": OLD["a"], "c": OLD["c"]}) == {"b": None}


def test_apply_merge_patch_leaves_its_input_alone() -> None:
    before = {"a": {"x": 1}}
    assert apply_merge_patch(before, {"a": {"x": None, "y": 2}}) == {"a": {"y": 2}}
    assert before == {"a": {"x": 1}}


def test_report_keys_round_trip_and_refuse_garbage() -> None:
    assert report_key("MeshRole", "edge") == "MeshRole/edge"
    assert parse_report_key("MeshRole/edge") == ("MeshRole", "", "edge")
    assert parse_report_key(report_key("Thing", "x", "ns")) == ("Thing", "ns", "x")
    with pytest.raises(ValueError, match="MeshRole/name"):
        parse_report_key("edge")


REPORTS = {
    "n1": {"MeshRole/edge": {"uid": "u1", "report": {"phase": "Applied"}}},
    "n2": {"MeshRole/edge": {"uid": "old-uid", "report": {"phase": "Failed"}},   # about a deleted namesake
           "HealthCheck/edge": {"uid": "u9", "report": {"phase": "Healthy"}}},
}


def test_a_fold_shows_only_entries_about_this_very_object() -> None:
    assert folded_nodes(REPORTS, "MeshRole/edge", "u1") == {"n1": {"phase": "Applied"}}
    assert folded_nodes(REPORTS, "HealthCheck/edge", "u9") == {"n2": {"phase": "Healthy"}}
    assert folded_nodes(REPORTS, "MeshRole/other", "u2") == {}


def test_the_fold_patch_removes_nodes_that_stopped_reporting() -> None:
    obj = {"kind": "MeshRole", "metadata": {"name": "edge", "uid": "u1"},
           "status": {"nodes": {"n1": {"phase": "Applying", "progress": 3}, "gone": {"phase": "Applied"}},
                      "matchedNodes": 2}}
    assert nodes_patch(obj, REPORTS) == {"n1": {"phase": "Applied", "progress": None}, "gone": None}
    obj["status"]["nodes"] = {"n1": {"phase": "Applied"}}
    assert nodes_patch(obj, REPORTS) == {}


def report(node: str, version: str, entries: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": node, "resourceVersion": version}, "status": {"entries": entries}}


def test_the_folder_tracks_which_objects_changed_and_ignores_older_events() -> None:
    folder = Folder(KubeClient(Credentials(server="http://localhost:1")))  # the watch bookkeeping: no request
    entry = {"uid": "u1", "report": {"phase": "Applied"}}
    assert folder.observe("ADDED", report("n1", "10", {"MeshRole/edge": entry}))
    assert folder.pending()
    assert not folder.observe("MODIFIED", report("n1", "11", {"MeshRole/edge": entry})), "nothing changed"
    assert not folder.observe("MODIFIED", report("n1", "9", {})), "an event older than what is known"
    assert folder.observe("MODIFIED", report("n1", "12", {"HealthCheck/h": entry}))
    assert folder._dirty == {"MeshRole/edge", "HealthCheck/h"}
    assert folder.observe("DELETED", report("n1", "13", {"HealthCheck/h": entry}))
    assert folder._reports == {}


@pytest.mark.parametrize("key", ["edge", "MeshRole", "MeshRole/a/b/c", "meshrole/edge", "MeshRole/Edge", "/x", ""])
def test_a_report_key_the_schema_refuses_is_skipped_not_a_fold_that_fails_for_ever(key: str) -> None:
    """A report stored before the key rule (issue #18): pending_kinds and every later fold parsed the key
    and raised, and a failed fold keeps its keys for the next one, so no object was folded again."""
    folder = Folder(KubeClient(Credentials(server="http://localhost:1")))
    entry = {"uid": "u1", "report": {"phase": "Applied"}}
    assert folder.observe("ADDED", report("n1", "10", {key: entry, "MeshRole/edge": entry}))
    assert folder._dirty == {"MeshRole/edge"}
    folder._loaded = True  # as after the first fold, when pending_kinds reads the keys
    assert folder.pending_kinds() == {"MeshRole"}


class CountingFolder:
    """Stands for Folder in fold_forever: counts the folds."""

    def __init__(self) -> None:
        self.folds: list[float] = []

    def fold_pending(self) -> list[dict[str, object]]:
        self.folds.append(time.monotonic())
        return []


def fold_times(report_at: list[float], then_wait: float, debounce: float = DEBOUNCE_SECONDS,
               max_delay: float = MAX_DELAY_SECONDS) -> list[float]:
    """Run fold_forever while reports arrive at the given times (seconds from the start), then `then_wait`
    more; returns when each fold ran, from the start."""

    async def scenario() -> list[float]:
        folder = CountingFolder()
        wake = asyncio.Event()
        task = asyncio.create_task(fold_forever(folder.fold_pending, wake, debounce, max_delay))
        started = time.monotonic()
        for at in report_at:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            wake.set()
        await asyncio.sleep(then_wait)
        task.cancel()
        return [t - started for t in folder.folds]

    return asyncio.run(scenario())


def test_a_steady_stream_of_reports_is_folded_about_once_a_second_not_once_per_report() -> None:
    """100 nodes reporting over a few seconds: each fold is a write every watcher of the object receives."""
    folds = fold_times([i * 0.05 for i in range(61)], then_wait=DEBOUNCE_SECONDS + 0.3)
    assert 2 <= len(folds) <= 5, folds  # not 60 (one per report), not 1 (only when the stream ends)
    assert max(b - a for a, b in itertools.pairwise(folds)) <= MAX_DELAY_SECONDS + 0.3, folds


def test_a_lone_report_is_folded_at_once_without_waiting_for_a_pause() -> None:
    """An on-demand backup's result: nothing else is reporting, so waiting for a pause only adds latency.
    (A long debounce here: the fold must not wait for it.)"""
    folds = fold_times([0.0], then_wait=1.0, debounce=5.0, max_delay=10.0)
    assert len(folds) == 1 and folds[0] < 1.0, folds


def test_a_report_soon_after_a_fold_waits_for_the_burst_to_pause() -> None:
    """The first report of a burst is folded at once; the next ones are gathered until the reports pause."""
    folds = fold_times([0.0, 0.1, 0.2], then_wait=1.5, debounce=0.5, max_delay=10.0)
    assert len(folds) == 2, folds
    assert folds[1] >= 0.2 + 0.5, folds  # one write for the rest of the burst, after the pause


def test_an_entry_worked_out_for_a_deleted_object_never_lands_on_its_successor() -> None:
    """The agent decides on the object it saw (uid a); by the time it reports, the watch cache may hold a
    re-created namesake (uid b): the entry must not be filed under b (a deleted NodeUpgrade's Failed
    would fail the new one). No API server here: the staged entries are what the next write would send."""
    cache = {"uid": "b"}
    reporter = Reporter(KubeClient(Credentials(server="https://127.0.0.1:9")), "n1",
                        lambda plural, name: {"metadata": {"name": name, "uid": cache["uid"]}})
    assert not reporter.node_entry("nodeupgrades", "redo", {"phase": "Failed"}, uid="a")  # no server: False
    assert reporter.entries("nodeupgrades") == {}
    reporter.node_entry("nodeupgrades", "redo", {"phase": "Idle"}, uid="b")
    assert reporter.entries("nodeupgrades")["redo"]["phase"] == "Idle"
    reporter.node_entry("nodeupgrades", "redo", {"phase": "Failed"}, uid="a")
    assert reporter.entries("nodeupgrades")["redo"]["phase"] == "Idle"
