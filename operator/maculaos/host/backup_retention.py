"""When a backup run applies retention (`restic forget`), instead of after every run.

Every restic call opens the repository again (key derivation), and `forget` also takes the exclusive
lock and reads every snapshot: about as long as a small incremental backup itself. So a run forgets only
when it is needed to hold the policy's bound, or when the policy has not been applied today:

- the node's snapshot count is unknown (first run of this agent on a Backup, the CLI): apply now;
- the count would exceed the most the policy can ever keep (the sum of the keep counts): apply now, so a
  node never holds more snapshots than that after a run;
- retention last ran on an earlier calendar day (in the Backup's time zone): apply now, so the exact
  GFS choice (e.g. which snapshot is "the last of its hour") is made at least once a day.

With keepWithin there is no count bound: the daily pass applies it. Skipping a forget can only keep more
snapshots, never fewer, and every forget keeps the newest (restic.retention_args).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

from maculaos.api.backup import Retention


@dataclass(frozen=True)
class RetentionState:
    """What the node knows of a Backup's repository since the last forget (from its own status entry)."""

    snapshot_count: int | None = None
    """Snapshots of this node and Backup after the last run; None when unknown."""
    last_time: dt.datetime | None = None
    """When retention last ran."""


def retention_ceiling(retention: Retention) -> int | None:
    """The most snapshots the policy can keep (a snapshot kept for several reasons counts once, so this is
    an upper bound); None when keepWithin makes it unbounded."""
    if retention.keep_within:
        return None
    return (max(retention.keep_last, 1) + retention.keep_hourly + retention.keep_daily + retention.keep_weekly
            + retention.keep_monthly + retention.keep_yearly)


def retention_due(retention: Retention, state: RetentionState, now: dt.datetime, time_zone: str) -> str | None:
    """Why this run (which just added one snapshot) must apply retention, or None when it can wait."""
    if state.snapshot_count is None or state.last_time is None:
        return "snapshot count unknown"
    count = state.snapshot_count + 1
    ceiling = retention_ceiling(retention)
    if ceiling is not None and count > ceiling:
        return f"{count} snapshots, the policy keeps at most {ceiling}"
    tz = zoneinfo.ZoneInfo(time_zone)
    if state.last_time.astimezone(tz).date() < now.astimezone(tz).date():
        return "not applied yet today"
    return None
