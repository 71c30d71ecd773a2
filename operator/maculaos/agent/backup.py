"""The Backup and Restore side of the agent: carry out the runs the operator asks for (status.run) when
this node is among the run's nodes, the periodic integrity check, and Restores aimed at this node; report
each in status.nodes.<this node>.

The agent never schedules: the operator decides when (and so a run happens once per scheduled time); the
agent remembers which run ids it did in its own status entry, so a restarted agent does not redo them.
Work runs in its own thread, so a long backup holds up neither mesh roles nor health checks.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import logging
import time
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

from croniter import CroniterError, croniter
from pydantic import ValidationError

from maculaos.agent import metrics
from maculaos.agent.backup_targets import SecretUnavailable, TargetError, repositories
from maculaos.api.backup import BackupSpec, RestoreSpec, RunPhase, node_start_delay, restore_refusals
from maculaos.api.common import SecretKeyRef, spec_selects
from maculaos.api.times import now_rfc3339, parse_rfc3339, rfc3339
from maculaos.host.backup import BackupJob, JobReport, run_job, save_local_job
from maculaos.host.backup_retention import RetentionState
from maculaos.host.paths import HostPathError
from maculaos.host.restic import ResticError
from maculaos.host.restore import SnapshotChoice, choose_in_repositories, restore_snapshot, system_landings
from maculaos.kube.rest import ApiError, KubeClient, resource_path

log = logging.getLogger("maculaos.agent")
BACKUPS = "backups"
RESTORES = "restores"
TICK_SECONDS = 5.0

#: (plural, name, entry) -> bool: how the engine reports (the agent's Reporter.node_entry).
Report = Callable[[str, str, dict[str, Any]], bool]
#: (object, type, reason, message): an Event about an object.
Notify = Callable[[dict[str, Any], str, str, str], None]


def backup_relevant(obj: dict[str, Any]) -> Any:
    """What a Backup change means to an agent: its spec, and the operator's run and peer decisions."""
    status = obj.get("status") or {}
    return obj["metadata"].get("generation"), obj.get("spec"), status.get("run"), status.get("meshPeers")


def read_secret_with(kube: KubeClient) -> Callable[[SecretKeyRef], str]:
    def read(ref: SecretKeyRef) -> str:
        where = f"Secret {ref.namespace}/{ref.name}"
        try:
            secret = kube.get(resource_path("v1", "secrets", ref.name, namespace=ref.namespace))
        except ApiError as exc:
            if exc.status >= HTTPStatus.INTERNAL_SERVER_ERROR or exc.status == HTTPStatus.TOO_MANY_REQUESTS:
                raise SecretUnavailable(f"cannot read {where} yet: {exc.status} {exc.reason}") from exc
            raise TargetError(f"cannot read {where}: {exc.status} {exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise SecretUnavailable(f"cannot read {where} yet: the API server did not answer ({exc})") from exc
        data = (secret.get("data") or {}).get(ref.key)
        if data is None:
            raise TargetError(f"Secret {ref.namespace}/{ref.name} has no key {ref.key!r}")
        return base64.b64decode(data).decode().strip()
    return read


@dataclass
class BackupSettings:
    node: str
    host_root: Path
    restic: str = "restic"


class BackupEngine:
    def __init__(self, settings: BackupSettings, read_secret: Callable[[SecretKeyRef], str], report: Report,
                 notify: Notify, clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)) -> None:
        self.settings = settings
        self.read_secret = read_secret
        self.report = report
        self.notify = notify
        self.clock = clock
        self.done_runs: dict[str, str] = {}
        """Backup name -> last run id this agent carried out (also in its status entry)."""
        self.done_restores: set[tuple[str, str]] = set()
        self.waiting: set[str] = set()
        """Work that found the API server silent (logged once as a warning)."""
        self.checked: dict[str, dt.datetime] = {}
        self.retention: dict[str, tuple[tuple[str, ...], RetentionState]] = {}
        """Backup name -> (targets, what the last run here learnt): newer than a status entry the watch
        may lag on."""

    # -- one pass ---------------------------------------------------------------------------------------

    def tick(self, backups: Mapping[str, dict[str, Any]], restores: Mapping[str, dict[str, Any]],
             labels: Mapping[str, str]) -> None:
        """Do whatever is due now, one item at a time."""
        for name, obj in sorted(backups.items()):
            if spec_selects(obj.get("spec") or {}, labels):
                self._backup_if_asked(name, obj)
        for name, obj in sorted(restores.items()):
            self._restore_if_mine(name, obj, backups, labels)

    def _own_entry(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return dict(((obj.get("status") or {}).get("nodes") or {}).get(self.settings.node) or {})

    def _backup_if_asked(self, name: str, obj: dict[str, Any]) -> None:
        try:
            spec = BackupSpec.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            self._report_backup(name, obj, {"phase": "Invalid", "message": f"not run: {exc.errors()[0]['msg']}"})
            return
        status = obj.get("status") or {}
        run = status.get("run") or {}
        entry = self._own_entry(obj)
        run_id = str(run.get("id") or "")
        already = self.done_runs.get(name) == run_id or (
            entry.get("runId") == run_id and entry.get("phase") in (RunPhase.SUCCEEDED, RunPhase.FAILED))
        if run_id and not already and self.settings.node in (run.get("nodes") or []):
            if self.settings.node in (run.get("timedOut") or []):  # too late: its slot went to another node
                self.done_runs[name] = run_id
                self._report_backup(name, obj, {**entry, "phase": RunPhase.FAILED, "runId": run_id,
                                                "failure": "RunTimedOut", "lastError": "not started: timed out",
                                                "message": f"run {run_id} not started: the operator timed this "
                                                           f"node out after runTimeout {spec.run_timeout}"})
            elif self._delay_over(spec, run):
                self._run_backup(name, obj, spec, run_id, entry, status)
            elif entry.get("runId") != run_id:
                self._report_backup(name, obj, {**entry, "phase": RunPhase.WAITING, "runId": run_id,
                                                "message": "waiting for this node's share of randomDelay"})
            return
        if spec.check is not None:
            self._check_if_due(name, obj, spec, entry, status)

    def _delay_over(self, spec: BackupSpec, run: Mapping[str, Any]) -> bool:
        if run.get("reason") != "Scheduled":
            return True
        delay = node_start_delay(self.settings.node, str(run["id"]), spec.random_delay)
        scheduled = parse_rfc3339(run.get("scheduledTime"))
        return scheduled is None or self.clock() >= scheduled + delay

    def _job(self, name: str, spec: BackupSpec, status: Mapping[str, Any], node: str | None = None) -> BackupJob:
        repos = repositories(spec, node or self.settings.node, self.settings.host_root, self.read_secret,
                             status.get("meshPeers") or {}, self.settings.node)
        self.waiting.clear()  # the API server answered: the next outage is worth a warning again
        target = next(t for t in ("local", "rest", "mesh", "s3") if getattr(spec.target, t) is not None)
        return BackupJob(name=name, node=node or self.settings.node, host_root=self.settings.host_root,
                         include=list(spec.include), exclude=list(spec.exclude), retention=spec.retention,
                         repositories=repos, target_type=target, include_k3s_datastore=spec.include_k3s_datastore,
                         restic=self.settings.restic)

    def _run_backup(self, name: str, obj: dict[str, Any], spec: BackupSpec, run_id: str, entry: dict[str, Any],
                    status: Mapping[str, Any]) -> None:
        base = {k: v for k, v in entry.items() if k not in ("lastUpdateTime",)}
        try:
            job = self._job(name, spec, status)
        except SecretUnavailable as exc:  # not begun: it starts once the API server answers (within runTimeout)
            self._waits(f"backup {name} run {run_id}", exc)
            return
        except TargetError as exc:
            self._end_run(name, obj, base, run_id, status, RetentionState(),
                          JobReport(ok=False, message=str(exc), failure="TargetError"))
            return
        self._report_backup(name, obj, {**base, "phase": RunPhase.RUNNING, "runId": run_id,
                                        "message": f"backing up (run {run_id})", "runStartTime": now_rfc3339()})
        state = self._retention_state(name, job, entry)
        try:
            job = replace(job, run_id=run_id, retention_state=state, time_zone=spec.time_zone)
            save_local_job(job)
            result = run_job(job, self.clock())
        except (TargetError, ResticError, OSError) as exc:
            result = JobReport(ok=False, message=str(exc), failure=getattr(getattr(exc, "failure", None), "value",
                                                                               "TargetError"))
        self._end_run(name, obj, base, run_id, status, state, result)

    def _end_run(self, name: str, obj: dict[str, Any], base: dict[str, Any], run_id: str, status: Mapping[str, Any],
                 state: RetentionState, result: JobReport) -> None:
        """Record and report a run's outcome: it is done, whatever it was, and never run again."""
        self.done_runs[name] = run_id
        self.retention[name] = (tuple(result.targets), RetentionState(
            result.snapshot_count, parse_rfc3339(result.retention_time) or state.last_time))
        metrics.set_backup(name, result.ok, result.duration_seconds, result.bytes_added, time.time())
        self._report_backup(name, obj, {**base, **_entry_from(result, run_id, status.get("nextRunTime"))})
        if result.ok:
            log.info(f"backup {name} run {run_id}: {result.message}")
        else:
            log.warning(f"backup {name} run {run_id} failed: {result.message}")
            self.notify(obj, "Warning", "BackupFailed", result.message)

    def _retention_state(self, name: str, job: BackupJob, entry: Mapping[str, Any]) -> RetentionState:
        """What is known of the snapshots in this job's repositories: nothing when the targets changed."""
        targets = tuple(r.display() for r in job.repositories)
        remembered = self.retention.get(name)
        if remembered is not None:
            return remembered[1] if remembered[0] == targets else RetentionState()
        return _retention_state(entry) if tuple(entry.get("targets") or ()) == targets else RetentionState()

    def _check_if_due(self, name: str, obj: dict[str, Any], spec: BackupSpec, entry: dict[str, Any],
                      status: Mapping[str, Any]) -> None:
        assert spec.check is not None
        last = self.checked.get(name) or parse_rfc3339(entry.get("lastCheckTime")) or parse_rfc3339(
            obj["metadata"].get("creationTimestamp")) or self.clock()
        try:
            due = croniter(spec.check.schedule,
                           last.astimezone(zoneinfo.ZoneInfo(spec.time_zone))).get_next(dt.datetime)
        except (CroniterError, zoneinfo.ZoneInfoNotFoundError, ValueError):
            return  # a check schedule that never fires (the operator marks the Backup Invalid naming it)
        if self.clock() < due or not entry.get("lastSnapshotId"):
            return
        started = self.clock()
        try:
            job = self._job(name, spec, status)
            for repo in job.repositories:
                job.restic_for(repo).check(spec.check.read_data_percent)
            result = {"lastCheckTime": now_rfc3339(), "lastCheckResult": "OK"}
        except SecretUnavailable as exc:  # not checked: tried again on the next tick
            self._waits(f"integrity check of backup {name}", exc)
            return
        except (TargetError, ResticError) as exc:
            result = {"lastCheckTime": now_rfc3339(), "lastCheckResult": str(exc)}
            self.notify(obj, "Warning", "IntegrityCheckFailed", str(exc))
        self.checked[name] = started
        self._report_backup(name, obj, {**{k: v for k, v in entry.items() if k != "lastUpdateTime"}, **result})

    def _waits(self, what: str, why: SecretUnavailable) -> None:
        """Log work that waits for the API server: once as a warning, then at debug (every tick retries)."""
        if what in self.waiting:
            log.debug(f"{what} still waits: {why}")
        else:
            self.waiting.add(what)
            log.warning(f"{what} waits for the API server: {why}")

    def _report_backup(self, name: str, obj: dict[str, Any], entry: dict[str, Any]) -> None:
        self.report(BACKUPS, name, {**entry, "observedGeneration": obj["metadata"].get("generation")})

    # -- restores ---------------------------------------------------------------------------------------

    def _restore_if_mine(self, name: str, obj: dict[str, Any], backups: Mapping[str, dict[str, Any]],
                         labels: Mapping[str, str]) -> None:
        raw = obj.get("spec") or {}
        uid = str(obj["metadata"].get("uid", ""))
        if (name, uid) in self.done_restores:
            return
        entry = self._own_entry(obj)
        if entry.get("phase") in (RunPhase.SUCCEEDED, RunPhase.FAILED):
            self.done_restores.add((name, uid))
            return
        backup = backups.get(str(raw.get("backupName")))
        mine = raw.get("nodeName") == self.settings.node or (
            raw.get("allNodes") and backup is not None and spec_selects(backup.get("spec") or {}, labels))
        if not mine:
            return
        generation = obj["metadata"].get("generation")
        started = time.monotonic()
        try:
            plan = self._judge_restore(obj, backup)
        except SecretUnavailable as exc:  # not begun: it starts once the API server answers
            self._waits(f"restore {name}", exc)
            return
        self.done_restores.add((name, uid))
        if isinstance(plan, _RestorePlan):
            # Running only for a restore that will run: a refused one goes straight to Failed.
            self.report(RESTORES, name, {"phase": RunPhase.RUNNING, "message": "restoring",
                                         "observedGeneration": generation})
            outcome = self._run_restore(obj, plan)
        else:
            outcome = plan
        self.report(RESTORES, name, {**outcome, "durationSeconds": round(time.monotonic() - started, 3),
                                     "observedGeneration": generation})
        if outcome["phase"] == RunPhase.FAILED:
            self.notify(obj, "Warning", "RestoreFailed", outcome["message"])

    def _judge_restore(self, obj: dict[str, Any], backup: dict[str, Any] | None) -> _RestorePlan | dict[str, Any]:
        """The restore to run, or the Failed outcome of one that must not run (the host untouched). Raises
        SecretUnavailable when its repository's Secrets cannot be read yet."""
        try:
            spec = RestoreSpec.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            return {"phase": RunPhase.FAILED, "message": f"not restored: {exc.errors()[0]['msg']}"}
        if backup is None:
            return {"phase": RunPhase.FAILED, "message": f"Backup {spec.backup_name} does not exist; nothing restored"}
        try:
            bspec = BackupSpec.model_validate(backup.get("spec") or {})
            refused = restore_refusals(spec, bspec.include)
            if refused:
                return {"phase": RunPhase.FAILED,
                        "message": "not restored: " + "; ".join(f"{f}: {why}" for f, why in refused)}
            linked = system_landings(self.settings.host_root, spec.paths or bspec.include, spec.target_path)
            if linked:
                return {"phase": RunPhase.FAILED, "message": "not restored: " + "; ".join(
                    f"{path} would land in {landing} through a symbolic link on this node, inside a system "
                    "directory, where a restore never writes; restore under a targetPath that is a real directory"
                    for path, landing in linked)}
            source = spec.source_node_name or self.settings.node
            return _RestorePlan(spec, self._job(spec.backup_name, bspec, backup.get("status") or {}, node=source))
        except (TargetError, ValidationError, OSError, HostPathError) as exc:
            return {"phase": RunPhase.FAILED, "message": str(exc)}

    def _run_restore(self, obj: dict[str, Any], plan: _RestorePlan) -> dict[str, Any]:
        spec, job = plan.spec, plan.job
        try:
            choice = SnapshotChoice(snapshot_id=spec.snapshot.id, latest=bool(spec.snapshot.latest),
                                    before=parse_rfc3339(spec.snapshot.before))
            started = time.monotonic()
            restic, snapshot = choose_in_repositories([job.restic_for(r) for r in job.repositories], job.node,
                                                      spec.backup_name, choice)
            log.info(f"restore {obj['metadata']['name']}: snapshot {snapshot.short_id} chosen in "
                     f"{time.monotonic() - started:.1f}s")
            paths = restore_snapshot(restic, snapshot, self.settings.host_root, spec.paths, spec.target_path)
        except (TargetError, ResticError, ValidationError, OSError, HostPathError) as exc:
            return {"phase": RunPhase.FAILED, "message": str(exc)}
        where = f" under {spec.target_path}" if spec.target_path else ""
        return {"phase": RunPhase.SUCCEEDED, "snapshotId": snapshot.id, "snapshotTime": rfc3339(snapshot.time),
                "message": f"restored {', '.join(paths)}{where} from snapshot {snapshot.short_id}"}


@dataclass(frozen=True)
class _RestorePlan:
    """A Restore judged safe to run, and the repositories it restores from."""
    spec: RestoreSpec
    job: BackupJob


def _retention_state(entry: Mapping[str, Any]) -> RetentionState:
    """What the last runs' reports say of the repository (unknown after a failed run or a new agent)."""
    count = entry.get("snapshotCount")
    return RetentionState(snapshot_count=count if isinstance(count, int) else None,
                          last_time=parse_rfc3339(entry.get("lastRetentionTime")))


def _entry_from(result: JobReport, run_id: str, next_run: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "phase": RunPhase.SUCCEEDED if result.ok else RunPhase.FAILED, "runId": run_id, "message": result.message,
        "lastRunTime": now_rfc3339(), "durationSeconds": result.duration_seconds, "nextRunTime": next_run,
        "lastError": "" if result.ok else result.message, "targets": result.targets,
        "snapshotCount": result.snapshot_count, "snapshotsRemoved": result.removed_snapshots,
    }
    if result.retention_time:
        entry |= {"lastRetentionTime": result.retention_time, "lastRetentionRemoved": result.removed_ids,
                  "lastRetentionReason": result.retention_reason}
    if result.ok:
        entry |= {"lastSnapshotId": result.snapshot_id, "lastSnapshotTime": result.snapshot_time,
                  "lastSuccessTime": result.snapshot_time, "filesNew": result.files_new,
                  "filesChanged": result.files_changed, "bytesNew": result.bytes_added,
                  "bytesProcessed": result.bytes_processed, "failure": None}  # None: merge-patch removes it
    else:
        entry["failure"] = result.failure
    return entry
