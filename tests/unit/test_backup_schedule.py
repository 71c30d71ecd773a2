"""Backup scheduling with a fixed clock: exactly once per scheduled time (also across operator restarts,
which only ever see the persisted status), missed runs, on-demand runs, concurrency, time zones and DST,
Stale/Failed conditions, mesh peer choice, and the restic commands and environments the agent builds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from maculaos.agent.backup_targets import TargetError, repositories
from maculaos.api.backup import BackupSpec, RestoreSpec, Retention, node_start_delay
from maculaos.api.common import SecretKeyRef
from maculaos.controller.backup import assign_mesh_peers, backup_outcome, failed_condition, restore_fields
from maculaos.controller.backup_schedule import admit_nodes, decide, scheduled_times
from maculaos.host.backup_retention import RetentionState, retention_ceiling, retention_due
from maculaos.host.restic import Restic, retention_args

UTC = dt.timezone.utc
NODES = ["nuc-01", "nuc-02", "pi-03"]
SECRET = {"name": "repo", "key": "password"}


def spec(**fields: Any) -> BackupSpec:
    return BackupSpec.model_validate({"target": {"local": {"path": "/backup"}}, "repositoryPasswordSecretRef": SECRET,
                                      **fields})


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def body(status: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "nightly", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z",
                         "annotations": annotations or {}}, "status": status or {}}


def test_a_new_backup_starts_its_schedule_now_without_a_run() -> None:
    decision = decide(spec(), {}, {}, NODES, at(2026, 1, 10, 12))
    assert not decision.new_run and "run" not in decision.fields
    assert decision.fields["lastScheduledTime"] == "2026-01-10T12:00:00Z"
    assert decision.fields["nextRunTime"] == "2026-01-11T02:00:00Z"


def test_each_scheduled_time_runs_exactly_once_across_passes_and_restarts() -> None:
    status: dict[str, Any] = {"lastScheduledTime": "2026-01-10T12:00:00Z"}
    runs = []
    # passes every 30 s for a day; a "restart" is just a pass that sees only the persisted status
    now = at(2026, 1, 10, 12)
    while now < at(2026, 1, 12, 12):
        decision = decide(spec(), status, {}, NODES, now)
        status = {**status, **decision.fields}
        if decision.new_run:
            runs.append(status["run"]["id"])
        now += dt.timedelta(seconds=30)
    assert runs == ["sched-20260111t020000z", "sched-20260112t020000z"]
    assert status["missedRuns"] == 0


def test_missed_runs_while_away_are_counted_and_run_once_on_recovery() -> None:
    status = {"lastScheduledTime": "2026-01-10T12:00:00Z"}
    decision = decide(spec(), status, {}, NODES, at(2026, 1, 13, 9))  # away over three 02:00s
    assert decision.new_run and decision.fields["run"]["reason"] == "CatchUp"
    assert decision.fields["run"]["id"] == "sched-20260113t020000z"
    assert decision.fields["missedRuns"] == 3 and "3 scheduled run(s) missed" in str(decision.event)
    skip = decide(spec(missedRunPolicy="Skip"), status, {}, NODES, at(2026, 1, 13, 9))
    assert not skip.new_run and skip.fields["missedRuns"] == 3 and "skipped" in str(skip.event)
    assert skip.fields["lastScheduledTime"] == "2026-01-13T02:00:00Z"  # not counted again next pass
    again = decide(spec(missedRunPolicy="Skip"), {**status, **skip.fields}, {}, NODES, at(2026, 1, 13, 9, 1))
    assert not again.new_run and again.fields["missedRuns"] == 3


def test_a_pass_a_few_minutes_late_is_on_time() -> None:
    decision = decide(spec(), {"lastScheduledTime": "2026-01-10T12:00:00Z"}, {}, NODES, at(2026, 1, 11, 2, 3))
    assert decision.fields["run"]["reason"] == "Scheduled" and decision.fields["missedRuns"] == 0


def test_suspend_stops_scheduled_runs_but_not_on_demand() -> None:
    status = {"lastScheduledTime": "2026-01-10T12:00:00Z"}
    assert not decide(spec(suspend=True), status, {}, NODES, at(2026, 1, 11, 2, 1)).new_run
    decision = decide(spec(suspend=True), status, {"os.macula.io/run-now": "t1"}, NODES, at(2026, 1, 11, 2, 1))
    assert decision.new_run and decision.fields["run"]["reason"] == "OnDemand"
    assert decision.fields["nextRunTime"] is None


def test_on_demand_runs_once_per_token() -> None:
    status: dict[str, Any] = {"lastScheduledTime": "2026-01-10T12:00:00Z"}
    first = decide(spec(), status, {"os.macula.io/run-now": "2026-01-10T12:05"}, NODES, at(2026, 1, 10, 12, 5))
    assert first.new_run
    status |= first.fields
    repeat = decide(spec(), status, {"os.macula.io/run-now": "2026-01-10T12:05"}, NODES, at(2026, 1, 10, 12, 6))
    assert not repeat.new_run and repeat.fields["run"]["id"] == first.fields["run"]["id"]
    other = decide(spec(), status, {"os.macula.io/run-now": "later"}, NODES, at(2026, 1, 10, 12, 7))
    assert other.new_run and other.fields["run"]["id"] != first.fields["run"]["id"]


def test_concurrency_limit_admits_nodes_as_others_finish() -> None:
    run = {"id": "r1", "nodes": []}
    run = admit_nodes(run, NODES, {}, 2, at(2026, 1, 1))
    assert run["nodes"] == ["nuc-01", "nuc-02"] and not run.get("completionTime")
    entries = {"nuc-01": {"runId": "r1", "phase": "Running"}, "nuc-02": {"runId": "r1", "phase": "Failed"}}
    run = admit_nodes(run, NODES, entries, 2, at(2026, 1, 1))
    assert run["nodes"] == ["nuc-01", "nuc-02", "pi-03"]
    entries |= {"nuc-01": {"runId": "r1", "phase": "Succeeded"}, "pi-03": {"runId": "old", "phase": "Succeeded"}}
    assert not admit_nodes(run, NODES, entries, 2, at(2026, 1, 1)).get("completionTime")
    entries["pi-03"] = {"runId": "r1", "phase": "Succeeded"}
    assert admit_nodes(run, NODES, entries, 2, at(2026, 1, 1, 0, 5))["completionTime"] == "2026-01-01T00:05:00Z"


def test_a_node_that_never_reports_is_timed_out_and_frees_its_slot() -> None:
    """maxConcurrentNodes 1: nuc-01 is let in and never reports. Within runTimeout it holds the slot; after
    it, the operator marks it timed out, lets nuc-02 in, names nuc-01 in Failed, and a later report of
    nuc-01's own wins over the timeout."""
    timeout = dt.timedelta(minutes=30)
    start = at(2026, 1, 1, 2)
    run = admit_nodes({"id": "r1", "reason": "OnDemand", "startTime": "2026-01-01T02:00:00Z", "nodes": []},
                      NODES, {}, 1, start, timeout)
    assert run["nodes"] == ["nuc-01"] and run["admitted"] == [{"node": "nuc-01", "time": "2026-01-01T02:00:00Z"}]
    run = admit_nodes(run, NODES, {}, 1, start + timeout, timeout)
    assert run["nodes"] == ["nuc-01"] and run["timedOut"] == []  # not yet: the deadline is not passed
    run = admit_nodes(run, NODES, {}, 1, start + timeout + dt.timedelta(seconds=1), timeout)
    assert run["timedOut"] == ["nuc-01"] and run["nodes"] == ["nuc-01", "nuc-02"]
    assert [a["node"] for a in run["admitted"]] == ["nuc-01", "nuc-02"] and not run.get("completionTime")
    entries = {"nuc-02": {"runId": "r1", "phase": "Succeeded"}}
    run = admit_nodes(run, NODES, entries, 1, start + dt.timedelta(minutes=40), timeout)
    entries["pi-03"] = {"runId": "r1", "phase": "Succeeded"}
    run = admit_nodes(run, NODES, entries, 1, start + dt.timedelta(minutes=50), timeout)
    assert run["completionTime"] == "2026-01-01T02:50:00Z"  # every node done or timed out

    status = {"run": run, "nodes": entries, "lastScheduledTime": "2026-01-01T02:00:00Z"}
    outcome = backup_outcome(body(status), spec(runTimeout="30m"), NODES, {}, {}, start + dt.timedelta(hours=1))
    failed = outcome.conditions[1]
    assert failed["status"] == "True" and failed["reason"] == "RunTimedOut"
    assert "nuc-01: did not report run r1 done within runTimeout 30m" in failed["message"]
    status["nodes"] = entries | {"nuc-01": {"runId": "r1", "phase": "Succeeded"}}  # it was only slow
    outcome = backup_outcome(body(status), spec(runTimeout="30m"), NODES, {}, {}, start + dt.timedelta(hours=1))
    assert outcome.conditions[1]["status"] == "False"


def test_a_scheduled_runs_deadline_counts_from_the_nodes_random_delay() -> None:
    delay = node_start_delay("nuc-01", "sched-1", "2h")
    assert delay > dt.timedelta(minutes=5)
    start = at(2026, 1, 1, 2)
    run = admit_nodes({"id": "sched-1", "reason": "Scheduled", "nodes": []}, NODES, {}, 1, start,
                      dt.timedelta(minutes=1), "2h")
    later = admit_nodes(run, NODES, {}, 1, start + delay, dt.timedelta(minutes=1), "2h")
    assert later["timedOut"] == []
    later = admit_nodes(run, NODES, {}, 1, start + delay + dt.timedelta(minutes=2), dt.timedelta(minutes=1), "2h")
    assert later["timedOut"] == ["nuc-01"]


def test_mesh_peers_of_a_node_no_longer_selected_are_removed_by_the_patch() -> None:
    servers = {n: f"http://{n}:8000" for n in NODES}
    status = {"lastScheduledTime": "2026-01-01T02:00:00Z",
              "meshPeers": {"gone-04": ["http://nuc-01:8000"], "nuc-01": ["http://nuc-02:8000"]}}
    mesh = spec(target={"mesh": {"replicationFactor": 1}})
    peers = backup_outcome(body(status), mesh, NODES, servers, {}, at(2026, 1, 1, 3)).fields["meshPeers"]
    assert peers["gone-04"] is None and all(peers[n] for n in NODES)


@pytest.mark.parametrize(("expression", "after", "until", "expected"), [
    # spring forward in Brussels (29 March 2026, 02:00 -> 03:00): 02:30 does not exist, runs at 03:00 CEST
    ("30 2 * * *", at(2026, 3, 28, 2), at(2026, 3, 30, 2), ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"]),
    # fall back (25 October 2026, 03:00 -> 02:00): 02:30 happens twice, the daily run happens once
    ("30 2 * * *", at(2026, 10, 24, 2), at(2026, 10, 26, 2),
     ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]),
    # an hourly schedule still runs every real hour through the repeated one
    ("0 * * * *", at(2026, 10, 24, 23, 30), at(2026, 10, 25, 2, 30),
     ["2026-10-25T00:00:00+00:00", "2026-10-25T01:00:00+00:00", "2026-10-25T02:00:00+00:00"]),
])
def test_time_zone_and_dst(expression: str, after: dt.datetime, until: dt.datetime, expected: list[str]) -> None:
    got = [t.astimezone(UTC).isoformat() for t in scheduled_times(expression, "Europe/Brussels", after, until)]
    assert got == expected


def test_schedule_is_read_in_its_time_zone() -> None:
    decision = decide(spec(timeZone="America/New_York"), {"lastScheduledTime": "2026-01-10T12:00:00Z"}, {}, NODES,
                      at(2026, 1, 10, 12))
    assert decision.fields["nextRunTime"] == "2026-01-11T07:00:00Z"  # 02:00 EST


def test_random_delay_spreads_nodes_within_the_bound_and_is_stable() -> None:
    delays = [node_start_delay(f"node-{i}", "sched-1", "10m") for i in range(50)]
    assert all(dt.timedelta(0) <= d <= dt.timedelta(minutes=10) for d in delays)
    assert len({d.seconds // 60 for d in delays}) >= 5
    assert node_start_delay("node-1", "sched-1", "10m") == delays[1]
    assert node_start_delay("node-1", "sched-1", "0s") == dt.timedelta(0)


def test_stale_and_failed_conditions_name_the_nodes() -> None:
    status = {"lastScheduledTime": "2026-01-10T12:00:00Z", "nodes": {
        "nuc-01": {"lastSuccessTime": "2026-01-10T02:00:00Z", "phase": "Succeeded"},
        "nuc-02": {"lastSuccessTime": "2026-01-06T02:00:00Z", "phase": "Failed", "failure": "WrongPassword",
                   "message": "wrong repository password"},
    }}
    outcome = backup_outcome(body(status), spec(), ["nuc-01", "nuc-02"], {}, {}, at(2026, 1, 10, 12))
    stale, failed = outcome.conditions
    assert stale["status"] == "True" and "nuc-02" in stale["message"] and "nuc-01" not in stale["message"]
    assert failed["status"] == "True" and failed["reason"] == "WrongPassword" and "nuc-02: wrong" in failed["message"]
    assert outcome.fields["lastSuccessfulTime"] == "2026-01-06T02:00:00Z"
    assert failed_condition({}, 1)["status"] == "False"


def test_mesh_peers_are_other_serving_nodes_and_stable() -> None:
    servers = {n: f"http://{n}:8000" for n in ["a", "b", "c", "d"]} | {"f": "not a url"}
    labels = {n: {"site": "x" if n != "d" else "y"} for n in servers}
    assert "not a url" not in str(assign_mesh_peers(["a", "b", "c"], servers, {"site": "x"}, labels, 3))
    peers = assign_mesh_peers(["a", "b", "c", "e"], servers, {"site": "x"}, labels, 2)
    for node, urls in peers.items():
        assert len(urls) == 2 and servers.get(node) not in urls and "http://d:8000" not in urls
    assert peers["e"] and len(set(peers["e"])) == 2
    assert assign_mesh_peers(["a"], servers, {"site": "x"}, labels, 2) == {"a": peers["a"]}


def test_restore_phase_from_node_reports() -> None:
    restore = RestoreSpec.model_validate({"backupName": "nightly", "allNodes": True, "snapshot": {"latest": True}})
    labels = {n: {} for n in NODES}
    status = {"nodes": {"nuc-01": {"phase": "Succeeded", "snapshotId": "abcdef0123"}}}
    assert restore_fields(restore, status, {}, labels)["phase"] == "Running"
    status["nodes"] |= {n: {"phase": "Succeeded"} for n in NODES[1:]}
    assert restore_fields(restore, status, {}, labels) == {"phase": "Succeeded", "snapshotId": "abcdef01",
                                                           "outcome": f"{len(NODES)}/{len(NODES)} restored"}
    status["nodes"]["pi-03"] = {"phase": "Failed"}
    assert restore_fields(restore, status, {}, labels)["phase"] == "Failed"
    assert restore_fields(restore, status, {}, labels)["outcome"] == f"{len(NODES) - 1}/{len(NODES)} restored, 1 failed"


def test_retention_always_keeps_the_newest_snapshot() -> None:
    assert retention_args(Retention(keep_last=0, keep_daily=7, keep_within="30d")) == [
        "--keep-last", "1", "--keep-daily", "7", "--keep-within", "30d"]
    assert retention_args(Retention(keep_last=3, keep_weekly=4, keep_monthly=12, keep_yearly=2)) == [
        "--keep-last", "3", "--keep-weekly", "4", "--keep-monthly", "12", "--keep-yearly", "2"]


def test_retention_is_due_for_an_unknown_count_over_the_ceiling_or_once_a_day() -> None:
    now = dt.datetime(2026, 3, 10, 14, 0, tzinfo=dt.timezone.utc)
    policy = Retention(keep_last=3, keep_daily=2)
    assert retention_ceiling(policy) == 5
    assert retention_ceiling(Retention(keep_last=0, keep_within="30d")) is None
    assert retention_ceiling(Retention(keep_last=0, keep_yearly=1)) == 2  # keep-last is at least 1
    earlier = now - dt.timedelta(hours=2)
    assert retention_due(policy, RetentionState(), now, "UTC") == "snapshot count unknown"
    assert retention_due(policy, RetentionState(4, earlier), now, "UTC") is None  # 5 after this run: within
    assert retention_due(policy, RetentionState(5, earlier), now, "UTC") == "6 snapshots, the policy keeps at most 5"
    yesterday = now - dt.timedelta(days=1)
    assert retention_due(policy, RetentionState(1, yesterday), now, "UTC") == "not applied yet today"
    # the day is the Backup's: 23:30 UTC on the 9th is already the 10th in Tokyo
    late = dt.datetime(2026, 3, 9, 23, 30, tzinfo=dt.timezone.utc)
    assert retention_due(policy, RetentionState(1, late), now, "UTC") == "not applied yet today"
    assert retention_due(policy, RetentionState(1, late), now, "Asia/Tokyo") is None
    # keepWithin has no count bound: only the daily pass applies it
    within = Retention(keep_last=1, keep_within="7d")
    assert retention_due(within, RetentionState(500, earlier), now, "UTC") is None
    assert retention_due(within, RetentionState(500, yesterday), now, "UTC") == "not applied yet today"


SECRETS = {"password": "repo-pw", "id": "AKIA", "key": "s3cr3t", "creds": "alice:pw"}


def read_secret(ref: SecretKeyRef) -> str:
    return SECRETS[ref.key]


def test_s3_repository_command_and_environment() -> None:
    s3 = spec(target={"s3": {"endpoint": "s3.example.com:9000", "bucket": "macula-backups",
                             "prefix": "fleet/${NODE_NAME}/", "region": "eu-west-1",
                             "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
                             "secretAccessKeySecretRef": {"name": "s3", "key": "key"}}})
    (repo,) = repositories(s3, "nuc-01", Path("/host"), read_secret, {})
    assert repo.location == "s3:https://s3.example.com:9000/macula-backups/fleet/nuc-01"
    assert repo.environment() == {"RESTIC_REPOSITORY": repo.location, "RESTIC_PASSWORD": "repo-pw",
                                  "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                                  "AWS_DEFAULT_REGION": "eu-west-1"}
    argv = Restic(repo, "restic")._argv(["snapshots", "--json"])
    assert argv == ["restic", "--no-cache", "snapshots", "--json"]


def test_rest_mesh_and_local_repositories() -> None:
    rest = spec(target={"rest": {"url": "https://backup.lan:8000/shop/", "credentialsSecretRef":
                                 {"name": "rest", "key": "creds"}}})
    (repo,) = repositories(rest, "pi-03", Path("/host"), read_secret, {})
    assert repo.location == "rest:https://backup.lan:8000/shop/pi-03/"
    assert repo.env == {"RESTIC_REST_USERNAME": "alice", "RESTIC_REST_PASSWORD": "pw"}
    mesh = spec(target={"mesh": {"replicationFactor": 2}})
    repos = repositories(mesh, "pi-03", Path("/host"), read_secret, {"pi-03": ["http://a:8000", "http://b:8000"]})
    assert [r.location for r in repos] == ["rest:http://a:8000/pi-03/", "rest:http://b:8000/pi-03/"]
    with pytest.raises(TargetError, match="no peers assigned to pi-03"):
        repositories(mesh, "pi-03", Path("/host"), read_secret, {})
    guarded = spec(target={"mesh": {"credentialsSecretRef": {"name": "peers", "key": "creds"}}})
    repos = repositories(guarded, "pi-03", Path("/host"), read_secret, {"pi-03": ["http://a:8000", "http://b:8000"]})
    assert [r.env for r in repos] == [{"RESTIC_REST_USERNAME": "alice", "RESTIC_REST_PASSWORD": "pw"}] * 2
    for target, field in (({"mesh": {}}, "mesh"), ({"rest": {"url": "http://nas:8000"}}, "rest")):
        target[field]["credentialsSecretRef"] = {"name": "peers", "key": "password"}  # holds no user:
        with pytest.raises(TargetError, match=f"spec.target.{field}.credentialsSecretRef: .* must hold user:password"):
            repositories(spec(target=target), "pi-03", Path("/host"), read_secret, {"pi-03": ["http://a:8000"]})
    local = spec()
    assert repositories(local, "pi-03", Path("/host"), read_secret, {})[0].location == "/host/backup"
    with pytest.raises(TargetError, match="cannot read another node's local repository"):
        repositories(local, "nuc-01", Path("/host"), read_secret, {}, this_node="pi-03")
