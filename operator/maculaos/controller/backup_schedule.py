"""When a Backup runs: pure schedule maths over the Backup's operator-owned status.

Exactly once per scheduled time, across operator restarts: ``status.lastScheduledTime`` records the last
scheduled time handled (run or skipped) and a run's id is derived from its scheduled time, so a second
operator pass, a restart or two writers racing all compute the same run. Missed runs (the operator was away
past a scheduled time) are counted; with missedRunPolicy RunOnce the newest of them runs once on recovery.
On-demand runs come from an annotation whose value is a fresh token per request. How many nodes back up at
once is capped: the run's ``nodes`` list grows as nodes report the run done.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from croniter import croniter

from maculaos.api.backup import RUN_NOW_ANNOTATION, BackupSpec, MissedRunPolicy, node_start_delay
from maculaos.api.times import parse_rfc3339, rfc3339

#: A scheduled time handled later than this counts as missed (the operator was away over it).
ON_TIME_GRACE = dt.timedelta(minutes=5)
#: At most this many past scheduled times are counted after a long absence.
MAX_COUNTED = 10000
DONE_PHASES = {"Succeeded", "Failed"}




def scheduled_times(expression: str, time_zone: str, after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    """Scheduled times in (after, until], read in the time zone. DST as cron does it: a time skipped by
    the spring jump runs right after it; a fixed-hour time the autumn fall-back repeats runs once."""
    tz = zoneinfo.ZoneInfo(time_zone)
    fixed_hour = expression.split()[1] != "*" if not expression.startswith("@") else expression != "@hourly"
    times: list[dt.datetime] = []
    it = croniter(expression, after.astimezone(tz))
    while len(times) < MAX_COUNTED:
        nxt: dt.datetime = it.get_next(dt.datetime)
        if nxt > until:
            break
        if not (fixed_hour and _second_occurrence(nxt, tz)):
            times.append(nxt)
    return times


def _second_occurrence(when: dt.datetime, tz: zoneinfo.ZoneInfo) -> bool:
    """True for the repeat of a wall-clock time that the fall-back hour shows twice."""
    wall = when.astimezone(tz).replace(tzinfo=None)
    first, second = wall.replace(fold=0).replace(tzinfo=tz), wall.replace(fold=1).replace(tzinfo=tz)
    return first.utcoffset() != second.utcoffset() and when.utcoffset() == second.utcoffset()


def next_time(expression: str, time_zone: str, after: dt.datetime) -> dt.datetime:
    nxt: dt.datetime = croniter(expression, after.astimezone(zoneinfo.ZoneInfo(time_zone))).get_next(dt.datetime)
    return nxt


def schedule_interval(expression: str, time_zone: str, now: dt.datetime) -> dt.timedelta:
    """The gap between the next two scheduled times: what "on schedule" means for staleness."""
    first = next_time(expression, time_zone, now)
    return next_time(expression, time_zone, first) - first


def scheduled_run_id(when: dt.datetime) -> str:
    return "sched-" + when.astimezone(dt.timezone.utc).strftime("%Y%m%dt%H%M%Sz")


def on_demand_run_id(token: str) -> str:
    return "ondemand-" + hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ScheduleDecision:
    """Operator-owned status fields that follow from the schedule now."""

    fields: dict[str, Any]
    new_run: bool
    event: str | None = None


def decide(spec: BackupSpec, status: Mapping[str, Any], annotations: Mapping[str, str],
           matched: Sequence[str], now: dt.datetime) -> ScheduleDecision:
    """lastScheduledTime, missedRuns, nextRunTime, onDemandToken and run, as they should be now."""
    last = parse_rfc3339(status.get("lastScheduledTime"))
    missed = int(status.get("missedRuns") or 0)
    run: dict[str, Any] | None = dict(status["run"]) if status.get("run") else None
    fields: dict[str, Any] = {}
    new_run = False
    event = None
    if last is None:
        last = now  # a new Backup: the schedule starts now, earlier times were never due
    due = scheduled_times(spec.schedule, spec.time_zone, last, now)
    if due:
        latest = due[-1]
        last = latest
        if not spec.suspend:
            late = now - latest > ON_TIME_GRACE
            if late:
                missed += len(due)
                event = (f"{len(due)} scheduled run(s) missed while the operator was away (newest "
                         f"{rfc3339(latest)}); " + ("running once now" if spec.missed_run_policy is
                                                      MissedRunPolicy.RUN_ONCE else "skipped (missedRunPolicy Skip)"))
            else:
                missed += len(due) - 1
            if not late or spec.missed_run_policy is MissedRunPolicy.RUN_ONCE:
                run = _new_run(scheduled_run_id(latest), "CatchUp" if late else "Scheduled", latest, now)
                new_run = True
    token = annotations.get(RUN_NOW_ANNOTATION, "")
    if token and token != status.get("onDemandToken"):
        fields["onDemandToken"] = token
        if not new_run:
            run = _new_run(on_demand_run_id(token), "OnDemand", now, now)
            new_run = True
    fields["lastScheduledTime"] = rfc3339(last)
    fields["missedRuns"] = missed
    fields["nextRunTime"] = None if spec.suspend else rfc3339(next_time(spec.schedule, spec.time_zone, now))
    if run is not None:
        fields["run"] = run
    return ScheduleDecision(fields, new_run, event)


def _new_run(run_id: str, reason: str, scheduled: dt.datetime, now: dt.datetime) -> dict[str, Any]:
    return {"id": run_id, "reason": reason, "scheduledTime": rfc3339(scheduled), "startTime": rfc3339(now),
            "nodes": [], "admitted": [], "timedOut": [], "completionTime": None}


def node_done(entry: Mapping[str, Any] | None, run_id: str) -> bool:
    return entry is not None and entry.get("runId") == run_id and str(entry.get("phase")) in DONE_PHASES


def admit_nodes(run: dict[str, Any], matched: Sequence[str], entries: Mapping[str, Mapping[str, Any]],
                max_concurrent: int, now: dt.datetime, run_timeout: dt.timedelta = dt.timedelta(hours=6),
                random_delay: str = "0s") -> dict[str, Any]:
    """Let more nodes start while fewer than max_concurrent are busy; a node that has not reported the run
    done within run_timeout of its admission (plus its share of randomDelay) is timed out and no longer
    holds a slot; the run is complete when every selected node reported it done or timed out."""
    run = dict(run)
    allowed = [n for n in run.get("nodes") or []]
    admitted = {str(a.get("node")): str(a.get("time")) for a in run.get("admitted") or [] if isinstance(a, dict)}
    timed_out = [n for n in run.get("timedOut") or []]
    done = {n for n in matched if node_done(entries.get(n), run["id"])}
    for node in allowed:
        since = parse_rfc3339(admitted.get(node)) or parse_rfc3339(run.get("startTime")) or now
        delay = node_start_delay(node, run["id"], random_delay) if run.get("reason") == "Scheduled" else dt.timedelta(0)
        if node in matched and node not in done and node not in timed_out and now > since + delay + run_timeout:
            timed_out.append(node)
    busy = [n for n in allowed if n in matched and n not in done and n not in timed_out]
    waiting = [n for n in sorted(matched) if n not in allowed]
    newly = waiting[:max(max_concurrent - len(busy), 0)]
    allowed += newly
    admitted |= {n: rfc3339(now) for n in newly}
    run |= {"nodes": allowed, "admitted": [{"node": n, "time": admitted[n]} for n in allowed if n in admitted],
            "timedOut": timed_out}
    if matched and all(n in done or n in timed_out for n in matched) and not run.get("completionTime"):
        run["completionTime"] = rfc3339(now)
    return run
