"""Which pods a drain evicts, skips or is blocked by (the Eviction calls themselves run against the real
API server in tests/integration/test_upgrade_rollout.py)."""

from __future__ import annotations

from typing import Any

from maculaos.api.nodeupgrade import DrainOptions
from maculaos.controller.nodeupgrade_drain import PodRef, pod_verdict


def pod(name: str = "p", phase: str = "Running", owner: str = "", empty_dir: bool = False,
        mirror: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns"}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "o"}]
    if mirror:
        meta["annotations"] = {"kubernetes.io/config.mirror": "x"}
    volumes = [{"name": "scratch", "emptyDir": {}}] if empty_dir else [{"name": "cfg", "configMap": {"name": "c"}}]
    return {"metadata": meta, "spec": {"volumes": volumes}, "status": {"phase": phase}}


def test_plain_pods_are_evicted_finished_and_static_ones_skipped() -> None:
    options = DrainOptions()
    assert pod_verdict(pod(owner="ReplicaSet"), options, None) == "evict"
    assert pod_verdict(pod(phase="Succeeded"), options, None) == "skip"
    assert pod_verdict(pod(mirror=True), options, None) == "skip"


def test_daemonset_pods_follow_ignore_daemon_sets() -> None:
    assert pod_verdict(pod(owner="DaemonSet"), DrainOptions(), None) == "skip"
    blocked = pod_verdict(pod(owner="DaemonSet"), DrainOptions(ignore_daemon_sets=False), None)
    assert blocked == "is a DaemonSet pod (drain.ignoreDaemonSets is false)"


def test_empty_dir_pods_need_delete_empty_dir_data() -> None:
    assert "set drain.deleteEmptyDirData: true" in pod_verdict(pod(empty_dir=True), DrainOptions(), None)
    assert pod_verdict(pod(empty_dir=True), DrainOptions(delete_empty_dir_data=True), None) == "evict"


def test_the_operator_never_evicts_itself() -> None:
    assert pod_verdict(pod("maculaos-operator-0"), DrainOptions(), PodRef("ns", "maculaos-operator-0")) == "skip"
    assert pod_verdict(pod("other"), DrainOptions(), PodRef("ns", "maculaos-operator-0")) == "evict"
