"""One backup of this node: the k3s datastore captured consistently, restic backup to every repository,
retention applied; and the node-local copy of the job (config.yaml section + a root-only credentials file)
that lets `maculaos backup ...` list, run and restore on the node without Kubernetes.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from maculaos.api.backup import Retention
from maculaos.api.times import now_rfc3339, rfc3339
from maculaos.host.backup_guard import Guarded, guard
from maculaos.host.backup_retention import RetentionState, retention_due
from maculaos.host.config import read_config, write_maculaos_section
from maculaos.host.files import atomic_write
from maculaos.host.nodeconfig import LocalBackupJob, NodeConfigError, read_node_config, section_value
from maculaos.host.paths import in_host_root
from maculaos.host.restic import BackupResult, Forgotten, Repository, Restic, ResticError, ResticFailure

#: The k3s server's embedded datastore (sqlite/kine) and where its consistent copy goes before a backup.
K3S_DATASTORE = "/var/lib/rancher/k3s/server/db/state.db"
K3S_COPY = "/var/lib/maculaos/backup-staging/k3s-state.db"
CREDENTIALS_DIR = Path("var/lib/maculaos/backup")
CACHE_DIR = Path("var/cache/maculaos/restic")
RUN_TAG = "maculaos-run"
#: S3 repositories this process has opened (or created) already: later runs skip the extra `init`.
_OPENED: set[str] = set()
#: Removed snapshot ids a report names (the count is always complete).
REMOVED_IDS_SHOWN = 20


@dataclass(frozen=True)
class BackupJob:
    """Everything one run needs, with credentials already resolved."""

    name: str
    node: str
    host_root: Path
    include: list[str]
    exclude: list[str]
    retention: Retention
    repositories: list[Repository]
    target_type: str
    include_k3s_datastore: bool = True
    restic: str = "restic"
    run_id: str = ""
    """Tagged on the snapshot (maculaos-run=<id>), so a run can be traced to its snapshots."""
    retention_state: RetentionState = field(default_factory=RetentionState)
    """What the node knows since the last forget; the default (unknown) applies retention on every run."""
    time_zone: str = "UTC"
    """The Backup's time zone: retention runs at least once per calendar day in it."""

    def restic_for(self, repo: Repository) -> Restic:
        return Restic(repo, self.restic, cache_dir=self.host_root / CACHE_DIR)


@dataclass
class JobReport:
    """The outcome of one run, as the node reports it."""

    ok: bool
    message: str
    snapshot_id: str = ""
    snapshot_time: str = ""
    files_new: int = 0
    files_changed: int = 0
    bytes_added: int = 0
    bytes_processed: int = 0
    duration_seconds: float = 0.0
    failure: str = ""
    removed_snapshots: int = 0
    targets: list[str] = field(default_factory=list)
    snapshot_count: int | None = None
    """This node's snapshots of the Backup after the run (the largest over its targets); None if unknown."""
    retention_time: str = ""
    """When retention ran in this run (RFC 3339), empty when it was not due."""
    retention_reason: str = ""
    removed_ids: list[str] = field(default_factory=list)
    """Short ids of snapshots retention removed in this run (at most REMOVED_IDS_SHOWN)."""


def capture_k3s_datastore(host_root: Path) -> str | None:
    """A consistent copy of k3s's sqlite datastore via SQLite's online backup (the live file may be mid-
    write); returns the node path of the copy, or None when this node runs no k3s server."""
    live = host_root / K3S_DATASTORE.lstrip("/")
    if not live.exists():
        return None
    copy = host_root / K3S_COPY.lstrip("/")
    copy.parent.mkdir(parents=True, exist_ok=True)
    tmp = copy.with_suffix(".tmp")
    try:
        source = sqlite3.connect(f"file:{live}?mode=ro", uri=True)
        try:
            target = sqlite3.connect(tmp)
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
        tmp.replace(copy)
    except (sqlite3.Error, OSError) as exc:  # a full disk above all: fail the run, free what was written
        tmp.unlink(missing_ok=True)
        full = "full" in str(exc).lower() or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        raise ResticError(ResticFailure.NODE_FULL if full else ResticFailure.FAILED, (
            f"cannot copy the k3s datastore into {copy.parent}{': no space left on this node' if full else ''} "
            f"({exc}); nothing backed up")) from exc
    return K3S_COPY


def run_job(job: BackupJob, now: dt.datetime | None = None) -> JobReport:
    """Back up to every repository and apply retention when it is due (host/backup_retention.py); a failure on
    one repository does not stop the others, and the report names each."""
    started = time.monotonic()
    include, exclude = list(job.include), list(job.exclude)
    if job.include_k3s_datastore and capture_k3s_datastore(job.host_root):
        include.append(K3S_COPY)
        exclude.append(str(Path(K3S_DATASTORE).parent))  # the live files: inconsistent by nature
    guarded = guard(job.host_root, include, job.repositories)
    exclude += [p for p in guarded.exclude if p not in exclude]
    report = JobReport(ok=True, message="", targets=[r.display() for r in job.repositories])
    notes: list[str] = list(guarded.notes)
    failures: list[str] = []
    written: list[str] = []
    counts: list[int | None] = []
    now = now or dt.datetime.now(dt.timezone.utc)
    due = retention_due(job.retention, job.retention_state, now, job.time_zone)
    for repo in job.repositories:
        restic = job.restic_for(repo)
        try:
            result, created = _backup_one(job, restic, include, exclude, guarded)
            counts.append(_retain(job, restic, report, due, now, created))
        except ResticError as exc:
            failures.append(str(exc))
            report.failure = report.failure or exc.failure.value
            continue
        written.append(repo.display())
        if not report.snapshot_id:
            summary = result.summary
            report.snapshot_id = summary.snapshot_id
            report.files_new, report.files_changed = summary.files_new, summary.files_changed
            report.bytes_added, report.bytes_processed = summary.data_added, summary.total_bytes_processed
            if result.missing:
                notes.append(f"include path(s) missing on this node, left out: {', '.join(result.missing)}")
            if result.warnings:
                notes.append(f"{len(result.warnings)} file(s) unreadable, e.g. {result.warnings[0]}")
    report.duration_seconds = round(time.monotonic() - started, 3)
    report.snapshot_time = now_rfc3339()
    known = [c for c in counts if c is not None]
    report.snapshot_count = max(known) if known and len(known) == len(counts) else None
    done = len(written)
    if failures:
        report.ok = False
        held = f" ({', '.join(written)} holds snapshot {report.snapshot_id[:8]})" if written else ""
        copies = f"{done} of {len(job.repositories)} target(s) written{held}; " if len(job.repositories) > 1 else ""
        report.message = copies + "; ".join(failures)
    else:
        report.message = f"snapshot {report.snapshot_id[:8]} on {done} target(s)" + (
            f"; {'; '.join(notes)}" if notes else "")
    return report


def _backup_one(job: BackupJob, restic: Restic, include: list[str], exclude: list[str],
                guarded: Guarded) -> tuple[BackupResult, bool]:
    """restic backup, and whether this run created the repository: it is created on first use (restic
    says it does not exist). S3 is asked first, once per process: restic retries a missing bucket for many
    minutes."""
    tags = [f"{RUN_TAG}={job.run_id}"] if job.run_id else []
    created = False
    if restic.repo.location.startswith("s3:") and restic.repo.location not in _OPENED:
        created = restic.ensure_initialized()
        _OPENED.add(restic.repo.location)
    restic.check_reachable()
    one_fs = guarded.one_file_system
    try:
        return restic.backup(job.host_root, include, exclude, job.node, job.name, tags, one_fs), created
    except ResticError as exc:
        if exc.failure is not ResticFailure.NO_REPOSITORY:
            raise
    _OPENED.discard(restic.repo.location)
    created = restic.ensure_initialized()
    return restic.backup(job.host_root, include, exclude, job.node, job.name, tags, one_fs), created


def _retain(job: BackupJob, restic: Restic, report: JobReport, due: str | None, now: dt.datetime,
            created: bool) -> int | None:
    """Apply retention when due; the node's snapshot count after this run (None when unknown). In a
    repository this run created, the outcome is known without asking restic: the one snapshot stays under
    any policy (keep-last is at least 1), so the `forget` (a lock and a key derivation) is skipped."""
    known = job.retention_state.snapshot_count
    if due is None:
        return None if known is None else known + 1
    forgotten = Forgotten([], 1) if created else restic.forget(job.retention, job.node, job.name)
    report.removed_snapshots += len(forgotten.removed)
    report.removed_ids += [i[:8] for i in forgotten.removed][:REMOVED_IDS_SHOWN - len(report.removed_ids)]
    report.retention_time = rfc3339(now)
    report.retention_reason = due
    return forgotten.kept




# -- the node-local copy of the job --------------------------------------------------------------------


def save_local_job(job: BackupJob) -> None:
    """Record the job in config.yaml (maculaos.backup.<name>) and its credentials in a 0600 file, so the
    node can list and restore on its own when the cluster is away."""
    credentials = {str(i): r.environment() for i, r in enumerate(job.repositories)}
    atomic_write(job.host_root / CREDENTIALS_DIR / f"{job.name}.json", json.dumps(credentials, indent=1), mode=0o600)
    raw = read_config(job.host_root).get("maculaos")
    section = raw.get("backup") if isinstance(raw, dict) else None
    section = dict(section) if isinstance(section, dict) else {}
    recorded = LocalBackupJob(
        target=job.target_type, repositories=[r.display() for r in job.repositories],
        include=job.include, exclude=job.exclude,
        retention=job.retention.model_dump(by_alias=True, exclude_none=True),
        include_k3s_datastore=job.include_k3s_datastore,
        credentials_file="/" + str(CREDENTIALS_DIR / f"{job.name}.json"))
    section[job.name] = section_value(recorded, section.get(job.name))  # keeps keys a newer agent wrote
    write_maculaos_section(job.host_root, "backup", section)


def local_jobs(host_root: Path, node: str, restic: str = "restic") -> dict[str, BackupJob]:
    """The jobs recorded on this node by save_local_job."""
    config = read_node_config(host_root)
    try:
        config.require("maculaos", "maculaos.backup")
    except NodeConfigError as exc:
        raise ResticError(ResticFailure.FAILED, f"the backups recorded on this node cannot be read: {exc}") from exc
    jobs = {}
    for name, raw in config.maculaos.backup.items():
        creds_file = in_host_root(host_root, raw.credentials_file)
        try:
            creds = json.loads(creds_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ResticError(ResticFailure.FAILED, f"cannot read the credentials of backup {name} "
                                                    f"({creds_file}): {exc}") from exc
        repos = []
        for i, _ in enumerate(raw.repositories):
            env = dict(creds[str(i)])
            repos.append(Repository(env.pop("RESTIC_REPOSITORY"), env.pop("RESTIC_PASSWORD"), env))
        jobs[name] = BackupJob(
            name=name, node=node, host_root=host_root, include=raw.include, exclude=raw.exclude,
            retention=Retention.model_validate(raw.retention), repositories=repos, target_type=raw.target,
            include_k3s_datastore=raw.include_k3s_datastore, restic=restic)
    return jobs


def select_jobs(jobs: dict[str, BackupJob], source: str | None) -> list[BackupJob]:
    """The jobs a `--from` names: a Backup's name or a target type (local, rest, mesh, s3); all when None."""
    if source is None:
        return list(jobs.values())
    picked = [j for n, j in jobs.items() if source in (n, j.target_type)]
    if not picked:
        have = ", ".join(f"{n} ({j.target_type})" for n, j in jobs.items()) or "none recorded on this node yet"
        raise ResticError(ResticFailure.NO_REPOSITORY, f"no backup matches --from {source}; backups: {have}")
    return picked


