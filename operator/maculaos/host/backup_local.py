"""`maculaos backup list | run | restore` on a node, from the jobs the agent recorded in the node's own
config: works with the cluster away, which is when a restore is most often needed."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path

from maculaos.host.backup import RUN_TAG, local_jobs, run_job, select_jobs
from maculaos.host.nodeconfig import read_node_config
from maculaos.host.restic import ResticError, ResticFailure
from maculaos.host.restore import SnapshotChoice, choose_in_repositories, restore_snapshot

DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def node_name(host_root: Path) -> str:
    """This node's name: maculaos.hostname in config.yaml, else /etc/hostname."""
    configured = read_node_config(host_root).maculaos.hostname
    if configured:
        return configured
    return (host_root / "etc/hostname").read_text().strip()


def parse_date(text: str) -> dt.datetime:
    """--date: a day means "as it was at the end of that day (UTC)"; a time means "before then"."""
    if DATE_ONLY.match(text):
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ResticError(ResticFailure.SNAPSHOT_NOT_FOUND,
                          f"--date {text!r} is neither a day (2026-01-15) nor a time (2026-01-15T08:00:00Z)") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def list_snapshots(host_root: Path, source: str | None, restic: str,
                   node: str | None = None) -> tuple[bool, list[str]]:
    """Each repository's snapshots; one that does not answer (a mesh peer down) is said so and the others
    are still listed (ok False)."""
    node = node or node_name(host_root)
    ok, lines = True, []
    for job in select_jobs(local_jobs(host_root, node, restic), source):
        for repo in job.repositories:
            lines.append(f"{job.name} ({job.target_type}) {repo.display()}:")
            try:
                snapshots = job.restic_for(repo).snapshots(node, job.name)
            except ResticError as exc:
                if exc.failure not in (ResticFailure.UNREACHABLE, ResticFailure.NO_REPOSITORY):
                    raise
                ok = False
                lines.append(f"  not answering: {exc}")
                continue
            for snap in snapshots:
                run = snap.tag_value(RUN_TAG) or "-"
                lines.append(f"  {snap.short_id}  {snap.time.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S}Z  "
                             f"run {run}")
    return ok, lines


def run_now(host_root: Path, source: str | None, restic: str) -> tuple[bool, list[str]]:
    node = node_name(host_root)
    ok, lines = True, []
    for job in select_jobs(local_jobs(host_root, node, restic), source):
        report = run_job(job)
        ok = ok and report.ok
        lines.append(f"{job.name}: {'ok' if report.ok else 'FAILED'}: {report.message}")
    return ok, lines


def restore(host_root: Path, source: str, choice: SnapshotChoice, paths: Sequence[str], target_dir: str | None,
            restic: str, source_node: str | None = None) -> str:
    """Restore from the one job --from names (several match: name the Backup instead)."""
    node = node_name(host_root)
    jobs = select_jobs(local_jobs(host_root, node, restic), source)
    if len(jobs) > 1:
        raise ResticError(ResticFailure.NO_REPOSITORY, (
            f"--from {source} matches several backups ({', '.join(j.name for j in jobs)}): name one of them"))
    job = jobs[0]
    wanted = source_node or node
    restic_, snapshot = choose_in_repositories([job.restic_for(r) for r in job.repositories], wanted, job.name,
                                               choice)
    done = restore_snapshot(restic_, snapshot, host_root, paths, target_dir)
    where = f" under {target_dir}" if target_dir else ""
    return (f"restored {', '.join(done)}{where} from snapshot {snapshot.short_id} ({snapshot.time:%Y-%m-%d %H:%M}Z, "
            f"{restic_.repo.display()})")
