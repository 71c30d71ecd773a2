"""Mirror a fleet's upstream repository into the node's git server (issue #19), without ever losing a
commit made on the site.

Authority: with an upstream, the upstream is authoritative (the fleet's repository), and local branches
follow it by fast-forward only. A branch pushed here while offline that has diverged is never overwritten:
it is kept as it is and reported as a conflict (status file and log), for a person to resolve upstream.
Without an upstream, the site's own server is the authority. The upstream's branches are fetched into
their own namespace (refs/upstream/heads/*) in one atomic fetch, never pruned: a failed or partial fetch
changes no ref, and nothing here deletes a local branch. Nothing is pushed upstream unless push_upstream
says so, and then only fast-forwards of the upstream's branches.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from maculaos.errors import MaculaosError

log = logging.getLogger(__name__)

UPSTREAM_NAMESPACE = "refs/upstream/heads/"
#: The last sync's report, inside the bare repository (git ignores it; on the data partition, backed up).
STATUS_FILE = "maculaos-sync.json"
FETCH_TIMEOUT = 300
#: git never asks a person for anything here (no terminal on a timer): a missing credential is an error.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "LC_ALL": "C"}


class GitSyncError(MaculaosError):
    """git refused something the sync needs locally (not the upstream's fault)."""


@dataclass
class Conflict:
    """A branch pushed here that diverged from the upstream's: kept, not overwritten."""

    branch: str
    local: str
    upstream: str


@dataclass
class SyncReport:
    """What one sync did; written as STATUS_FILE."""

    upstream: str
    time: float = field(default_factory=time.time)
    error: str | None = None
    fast_forwarded: dict[str, list[str]] = field(default_factory=dict)
    """branch -> [old, new]."""
    created: dict[str, str] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    ahead: list[str] = field(default_factory=list)
    """Local branches ahead of the upstream's (pushed here), not pushed upstream."""
    pushed: list[str] = field(default_factory=list)
    upstream_heads: dict[str, str] = field(default_factory=dict)
    local_heads: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.conflicts


def _git(repository: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # safe.directory: the repository belongs to the server's user; the sync may run as another (root).
    return subprocess.run(["git", "-c", "safe.directory=*", "--git-dir", str(repository), *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **GIT_ENV})


def heads(repository: Path, namespace: str = "refs/heads/") -> dict[str, str]:
    """branch -> commit of the refs under namespace."""
    result = _git(repository, "for-each-ref", "--format=%(refname) %(objectname)", namespace)
    if result.returncode != 0:
        raise GitSyncError(f"{repository}: cannot list its branches: {result.stderr.strip()}")
    return {name.removeprefix(namespace): sha for name, sha in
            (line.split(" ", 1) for line in result.stdout.splitlines())}


def _is_ancestor(repository: Path, older: str, newer: str) -> bool:
    return _git(repository, "merge-base", "--is-ancestor", older, newer).returncode == 0


def _update(repository: Path, branch: str, new: str, old: str | None) -> None:
    """Move refs/heads/branch from old (None: absent) to new, refused if a push moved it meanwhile."""
    expected = old if old is not None else "0" * len(new)
    result = _git(repository, "update-ref", "-m", "maculaos gitops sync", f"refs/heads/{branch}", new, expected)
    if result.returncode != 0:
        raise GitSyncError(f"{repository}: cannot move {branch}: {result.stderr.strip()}")


def _redact(text: str) -> str:
    return text.strip().replace("\n", "; ")[:500]


def sync(repository: Path, upstream: str, push_upstream: bool = False) -> SyncReport:
    """Fetch the upstream, fast-forward the local branches that are behind, create the missing ones, and
    report the rest; the report is written to the repository's STATUS_FILE and returned. An unreachable
    upstream is an error in the report (nothing local changes)."""
    report = SyncReport(upstream=upstream)
    fetch = _git(repository, "fetch", "--atomic", "--no-tags", "--no-write-fetch-head", upstream,
                 f"+refs/heads/*:{UPSTREAM_NAMESPACE}*", timeout=FETCH_TIMEOUT)
    if fetch.returncode != 0:
        report.error = f"fetching {upstream} failed (local branches untouched): {_redact(fetch.stderr)}"
        log.error("git sync: %s", report.error)
    else:
        _follow(repository, report, push_upstream)
    report.upstream_heads = heads(repository, UPSTREAM_NAMESPACE)
    report.local_heads = heads(repository)
    write_report(repository, report)
    return report


def _follow(repository: Path, report: SyncReport, push_upstream: bool) -> None:
    local = heads(repository)
    for branch, theirs in sorted(heads(repository, UPSTREAM_NAMESPACE).items()):
        ours = local.get(branch)
        if ours == theirs:
            continue
        if ours is None:
            _update(repository, branch, theirs, None)
            report.created[branch] = theirs
            log.info("git sync: %s created at %s from the upstream", branch, theirs[:12])
        elif _is_ancestor(repository, ours, theirs):
            _update(repository, branch, theirs, ours)
            report.fast_forwarded[branch] = [ours, theirs]
            log.info("git sync: %s fast-forwarded %s..%s", branch, ours[:12], theirs[:12])
        elif _is_ancestor(repository, theirs, ours):
            if push_upstream and _push(repository, report, branch):
                report.pushed.append(branch)
            else:
                report.ahead.append(branch)
        else:
            report.conflicts.append(Conflict(branch=branch, local=ours, upstream=theirs))
            log.error("git sync: CONFLICT on %s: the local branch (%s) and the upstream's (%s) have diverged; "
                      "the local branch is kept as it is and the upstream's is at %s%s; merge them upstream",
                      branch, ours[:12], theirs[:12], UPSTREAM_NAMESPACE, branch)


def _push(repository: Path, report: SyncReport, branch: str) -> bool:
    """Push a branch that is ahead to the upstream, never forced."""
    result = _git(repository, "push", "--porcelain", report.upstream, f"refs/heads/{branch}:refs/heads/{branch}",
                  timeout=FETCH_TIMEOUT)
    if result.returncode != 0:
        log.error("git sync: pushing %s upstream failed: %s", branch, _redact(result.stderr))
        return False
    _git(repository, "update-ref", f"{UPSTREAM_NAMESPACE}{branch}", f"refs/heads/{branch}")
    log.info("git sync: pushed %s upstream", branch)
    return True


def write_report(repository: Path, report: SyncReport) -> None:
    from maculaos.host.files import atomic_write

    atomic_write(repository / STATUS_FILE, json.dumps(asdict(report), indent=2, sort_keys=True) + "\n")


def read_report(repository: Path) -> SyncReport | None:
    """The last sync's report; None when the repository was never synced (or the file is unreadable)."""
    try:
        raw = json.loads((repository / STATUS_FILE).read_text())
        raw["conflicts"] = [Conflict(**c) for c in raw.get("conflicts", [])]
        return SyncReport(**raw)
    except (OSError, ValueError, TypeError):
        return None
