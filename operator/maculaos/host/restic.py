"""A typed wrapper over the restic CLI (0.18): every call with ``--json`` parsed by pydantic, the
repository and its credentials passed by environment (never on the command line, where `ps` shows them),
and restic's exit codes turned into errors a person can act on.

Safety rules live here, not in the callers: retention always keeps the newest snapshot; a lock is only
removed when its owner is provably gone (this host, PID not alive); nothing here deletes host data.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from maculaos.api.backup import Retention
from maculaos.errors import MaculaosError
from maculaos.host.paths import in_host_root

#: Tag every snapshot carries: which Backup made it.
BACKUP_TAG = "maculaos-backup"
#: Tag recording the host root the paths were read under (the agent sees / at /host).
ROOT_TAG = "maculaos-root"
DEFAULT_TIMEOUT = 6 * 3600.0
CONNECT_TIMEOUT = 5.0


class ResticFailure(StrEnum):
    """Why a restic call failed, as a program can switch on; the message says it for a person."""

    WRONG_PASSWORD = "WrongPassword"
    UNREACHABLE = "TargetUnreachable"
    NO_REPOSITORY = "NoRepository"
    LOCKED = "RepositoryLocked"
    NO_SPACE = "TargetFull"
    NODE_FULL = "NodeDiskFull"
    SNAPSHOT_NOT_FOUND = "SnapshotNotFound"
    CORRUPT = "RepositoryDamaged"
    INCLUDE_MISSING = "IncludePathMissing"
    ACCESS_DENIED = "TargetAccessDenied"
    FAILED = "ResticFailed"


class ResticError(MaculaosError):
    def __init__(self, failure: ResticFailure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True)
class Repository:
    """One restic repository and what restic needs to open it (passed by environment)."""

    location: str
    """restic's repository string: a path, rest:http://..., s3:https://..."""
    password: str
    env: dict[str, str] = field(default_factory=dict)
    """Target credentials: RESTIC_REST_USERNAME/PASSWORD or AWS_ACCESS_KEY_ID/SECRET_ACCESS_KEY..."""

    def environment(self) -> dict[str, str]:
        return {"RESTIC_REPOSITORY": self.location, "RESTIC_PASSWORD": self.password, **self.env}

    def display(self) -> str:
        """The location without any credentials, for messages (a person may put user:password@ in a
        rest: URL, which restic accepts)."""
        return re.sub(r"(?<=://)[^/@\s]*@", "", self.location, count=1)


def local_repository(path: Path, password: str) -> Repository:
    return Repository(str(path), password)


def rest_repository(url: str, password: str, credentials: str | None = None) -> Repository:
    """A rest-server repository; credentials as user:password go by RESTIC_REST_USERNAME/PASSWORD."""
    env: dict[str, str] = {}
    if credentials:
        user, _, secret = credentials.partition(":")
        env = {"RESTIC_REST_USERNAME": user, "RESTIC_REST_PASSWORD": secret}
    return Repository(f"rest:{url.rstrip('/')}/", password, env)


def s3_repository(endpoint: str, bucket: str, prefix: str, password: str, access_key_id: str,
                  secret_access_key: str, region: str = "", insecure_http: bool = False) -> Repository:
    scheme = "http" if insecure_http else "https"
    path = "/".join(p for p in (bucket, prefix.strip("/")) if p)
    env = {"AWS_ACCESS_KEY_ID": access_key_id, "AWS_SECRET_ACCESS_KEY": secret_access_key}
    if region:
        env["AWS_DEFAULT_REGION"] = region
    return Repository(f"s3:{scheme}://{endpoint}/{path}", password, env)


class ResticModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Snapshot(ResticModel):
    id: str
    short_id: str = ""
    time: dt.datetime
    hostname: str = ""
    paths: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)

    def tag_value(self, key: str) -> str | None:
        prefix = f"{key}="
        return next((t.removeprefix(prefix) for t in self.tags if t.startswith(prefix)), None)


class BackupSummary(ResticModel):
    """restic backup's closing JSON message."""

    snapshot_id: str = ""
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    data_added: int = 0
    total_files_processed: int = 0
    total_bytes_processed: int = 0
    total_duration: float = 0.0


class LockInfo(ResticModel):
    time: dt.datetime
    exclusive: bool = False
    hostname: str = ""
    pid: int = 0


@dataclass(frozen=True)
class BackupResult:
    summary: BackupSummary
    missing: list[str]
    """Include paths that did not exist and were left out (the rest was backed up)."""
    warnings: list[str]


@dataclass(frozen=True)
class Forgotten:
    """What one `restic forget` did to a node's snapshots of one Backup."""

    removed: list[str]
    """Ids of the snapshots removed."""
    kept: int
    """How many snapshots remain."""


def retention_args(retention: Retention) -> list[str]:
    """restic forget flags for a GFS policy. keep-last is at least 1, so the newest snapshot (the last
    good one: only successful runs make snapshots) survives any policy."""
    args = ["--keep-last", str(max(retention.keep_last, 1))]
    for flag, count in (("--keep-hourly", retention.keep_hourly), ("--keep-daily", retention.keep_daily),
                        ("--keep-weekly", retention.keep_weekly), ("--keep-monthly", retention.keep_monthly),
                        ("--keep-yearly", retention.keep_yearly)):
        if count > 0:
            args += [flag, str(count)]
    if retention.keep_within:
        args += ["--keep-within", retention.keep_within]
    return args


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknown owner: not provably gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs_restic(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether the live process pid is a restic (its command name); True when that cannot be read."""
    try:
        return "restic" in (proc / str(pid) / "comm").read_text()
    except FileNotFoundError:
        return False  # gone since
    except OSError:
        return True


def _boot_time(proc: Path = Path("/proc")) -> dt.datetime | None:
    """When this host booted (btime in /proc/stat), or None when unknown."""
    try:
        line = next(x for x in (proc / "stat").read_text().splitlines() if x.startswith("btime "))
        return dt.datetime.fromtimestamp(int(line.split()[1]), dt.timezone.utc)
    except (OSError, StopIteration, ValueError):
        return None


def lock_owner_gone(lock: LockInfo, hostname: str, proc: Path = Path("/proc")) -> bool:
    """Provably gone: taken on this very host by a process that no longer exists. A lock from another
    host is never judged stale here, however old (that host may be busy, or asleep).

    A lock's pid alone does not prove its owner alive: a node that died mid-backup (power lost) comes
    back with that pid reused by another process, and its backups would stay locked out forever. So
    the owner is also gone when the lock predates this host's boot, or when the pid now runs something
    other than restic (the agent shares the host's PID namespace, so a live restic there is visible)."""
    if lock.hostname != hostname:
        return False
    boot = _boot_time(proc)
    if boot is not None and lock.time < boot:
        return True
    return lock.pid > 0 and not (_pid_alive(lock.pid) and _runs_restic(lock.pid, proc))


def _classify(code: int, stderr: str, repo: Repository, writes_to: Path | None = None) -> ResticError:
    """What went wrong, for a person and a program. writes_to: where the call writes on this node (a
    restore's staging directory), so a full disk there is named as this node's, not the target's."""
    text = stderr.strip().splitlines()
    last = next((line for line in reversed(text) if line.strip()), f"restic exited with {code}")
    lower = stderr.lower()
    where = repo.display()
    node_full = next((line.strip() for line in text if writes_to is not None and str(writes_to) in line
                      and "no space left on device" in line.lower()), "")
    if node_full and writes_to is not None:
        return ResticError(ResticFailure.NODE_FULL, f"no space left on this node's disk under {writes_to.parent}: "
                                                    f"{node_full}")
    if code == 12 or "wrong password" in lower:
        return ResticError(ResticFailure.WRONG_PASSWORD, (
            f"wrong repository password for {where}: check the Secret in repositoryPasswordSecretRef "
            "(the repository was made with another one)"))
    if code == 10:
        return ResticError(ResticFailure.NO_REPOSITORY, f"no restic repository at {where}")
    if code == 11:
        return ResticError(ResticFailure.LOCKED, f"repository {where} is locked: {last}")
    # 507 as restic prints a status, "(507)": bare, it matched ports such as 50761 in the repository
    # location restic repeats on its last line, and a refused login read as a full target.
    if "no space left on device" in lower or "insufficient storage" in lower or "(507)" in last:
        return ResticError(ResticFailure.NO_SPACE, f"the backup target {where} is full: {last}")
    denied = ("access denied", "signature we calculated does not match", "invalidaccesskeyid", "401 unauthorized",
              "403 forbidden")
    if any(d in lower for d in denied):
        said = next((line.strip() for line in text if any(d in line.lower() for d in denied)), last)
        return _access_denied(repo, said)
    if "connection refused" in lower or "no such host" in lower or "i/o timeout" in lower:
        return ResticError(ResticFailure.UNREACHABLE, f"cannot reach the backup target {where}: {last}")
    if "ciphertext verification failed" in lower or "pack" in lower and ("damaged" in lower or "invalid" in lower):
        return ResticError(ResticFailure.CORRUPT, (
            f"repository {where} is damaged: {last}; run `restic check` and see "
            "https://restic.readthedocs.io/en/stable/077_troubleshooting.html"))
    return ResticError(ResticFailure.FAILED, f"restic failed on {where} (exit {code}): {last}")


def _access_denied(repo: Repository, said: str) -> ResticError:
    where = repo.display()
    if repo.location.startswith("rest:") and "RESTIC_REST_USERNAME" not in repo.env:
        return ResticError(ResticFailure.ACCESS_DENIED, (
            f"the backup target {where} asks for credentials and the Backup gives none ({said}): set "
            "spec.target.rest.credentialsSecretRef, or spec.target.mesh.credentialsSecretRef for mesh peers, to "
            "a Secret key holding user:password of a user in the server's htpasswd (on a MaculaOS peer: its "
            "config.yaml maculaos.backup_server.htpasswd)"))
    return ResticError(ResticFailure.ACCESS_DENIED, (
        f"the backup target {where} refused the credentials ({said}): check the Secret the target's "
        "credentials reference (s3: accessKeyIdSecretRef/secretAccessKeySecretRef; rest and mesh: "
        "credentialsSecretRef, user:password of a user in the server's htpasswd, on a MaculaOS peer its "
        "config.yaml maculaos.backup_server.htpasswd)"))


class Restic:
    """restic against one repository. Each call is one process; nothing is kept between calls."""

    def __init__(self, repo: Repository, binary: str = "restic", cache_dir: Path | None = None,
                 hostname: str | None = None) -> None:
        self.repo = repo
        self.binary = binary
        self.cache_dir = cache_dir
        self.hostname = hostname or socket.gethostname()

    def _argv(self, args: Sequence[str]) -> list[str]:
        cache = ["--cache-dir", str(self.cache_dir)] if self.cache_dir else ["--no-cache"]
        return [self.binary, *cache, *args]

    def _env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "LANG", "TZ")}
        return {**keep, **self.repo.environment(), "RESTIC_PROGRESS_FPS": "0.2"}

    def run(self, *args: str, timeout: float = DEFAULT_TIMEOUT, ok_codes: tuple[int, ...] = (0,),
            stdin: int | None = subprocess.DEVNULL, writes_to: Path | None = None) -> subprocess.CompletedProcess[str]:
        """One restic call; raises ResticError on an exit code outside ok_codes (writes_to: see _classify).
        A network target is probed first, each call: a peer that went away since the last call fails it in
        a moment instead of restic's retry loop of many minutes."""
        self.check_reachable()
        try:
            result = subprocess.run(self._argv(args), env=self._env(), capture_output=True, text=True,
                                    timeout=timeout, stdin=stdin)
        except subprocess.TimeoutExpired as exc:
            partial = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr or "")
            if "bucket does not exist" in partial.lower():  # restic retries this for many minutes
                raise ResticError(ResticFailure.NO_REPOSITORY, f"no bucket for {self.repo.display()}") from exc
            raise ResticError(ResticFailure.UNREACHABLE, (
                f"restic {args[0]} on {self.repo.display()} gave no answer within {timeout:.0f}s")) from exc
        except FileNotFoundError as exc:
            raise ResticError(ResticFailure.FAILED, f"restic is not installed ({self.binary} not found)") from exc
        if result.returncode not in ok_codes:
            raise _classify(result.returncode, _error_text(result), self.repo, writes_to)
        return result

    def json(self, *args: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        return json.loads(self.run(*args, "--json", timeout=timeout).stdout or "null")

    # -- the repository ---------------------------------------------------------------------------------

    def check_reachable(self) -> None:
        """A fast TCP probe of a network target, so an absent server fails in seconds with a clear
        message instead of restic's long retry loop."""
        for address in _network_address(self.repo.location):
            try:
                socket.create_connection(address, timeout=CONNECT_TIMEOUT).close()
            except OSError as exc:
                raise ResticError(ResticFailure.UNREACHABLE, (
                    f"cannot reach the backup target {self.repo.display()} ({address[0]}:{address[1]}): "
                    f"{exc.strerror or exc}")) from exc

    def ensure_initialized(self) -> bool:
        """Open the repository, creating it on first use; True when it was created now. A repository
        that exists but does not open (wrong password, damage) is never re-initialised."""
        self.check_reachable()
        if self.repo.location.startswith("s3:"):
            return self._init_s3()
        try:
            self.run("cat", "config", timeout=120)
            return False
        except ResticError as exc:
            if exc.failure is not ResticFailure.NO_REPOSITORY:
                raise
        self.run("init", timeout=300)
        return True

    def _init_s3(self) -> bool:
        """On S3 restic retries a missing bucket for many minutes, so `init` comes first: it creates the
        bucket, and on an existing repository it refuses without touching anything."""
        try:
            self.run("init", timeout=300)
            return True
        except ResticError as exc:
            if "already" not in str(exc).lower():
                raise
        self.run("cat", "config", timeout=120)  # the password opens it (else WrongPassword)
        return False

    # -- locks ------------------------------------------------------------------------------------------

    def locks(self) -> dict[str, LockInfo]:
        ids = self.run("list", "locks", "--no-lock", timeout=120).stdout.split()
        found = {}
        for lock_id in ids:
            try:
                raw = self.run("cat", "lock", lock_id, "--no-lock", timeout=60).stdout
                found[lock_id] = LockInfo.model_validate_json(raw)
            except (ResticError, ValidationError):
                continue  # removed in between, or unreadable: not ours to judge
        return found

    def remove_stale_locks(self) -> list[str]:
        """Remove locks whose owner is provably gone; raise LOCKED naming a live owner if there is one.
        restic's own `unlock` judges by the PID alone, so it keeps a lock whose PID was reused (a node
        that died and booted again): `--remove-all`, only when every lock read was judged gone. Only a
        lock taken in the instant between the read and the removal could be lost, and only this node's
        own restic writes the node's repository."""
        locks = self.locks()
        live = {i: lk for i, lk in locks.items() if not lock_owner_gone(lk, self.hostname)}
        if live:
            lock_id, lock = next(iter(live.items()))
            kind = "exclusive" if lock.exclusive else "shared"
            raise ResticError(ResticFailure.LOCKED, (
                f"repository {self.repo.display()} is in use: {kind} lock {lock_id[:8]} held by "
                f"{lock.hostname or 'an unknown host'} pid {lock.pid} since {lock.time.isoformat(timespec='seconds')}; "
                "left in place (only locks of processes that are provably gone are removed)"))
        if locks:
            self.run("unlock", "--remove-all", timeout=120)
        return sorted(locks)

    def with_lock_retry(self, *args: str, timeout: float = DEFAULT_TIMEOUT,
                        ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        """Run a command; if a lock stops it, remove provably stale locks and try once more."""
        try:
            return self.run(*args, timeout=timeout, ok_codes=ok_codes)
        except ResticError as exc:
            if exc.failure is not ResticFailure.LOCKED:
                raise
        self.remove_stale_locks()
        return self.run(*args, timeout=timeout, ok_codes=ok_codes)

    # -- backup, snapshots, retention, check ------------------------------------------------------------

    def backup(self, host_root: Path, include: Sequence[str], exclude: Sequence[str], node: str,
               backup_name: str, extra_tags: Sequence[str] = (), one_file_system: bool = False) -> BackupResult:
        """Back up the include paths (as seen under host_root); absent ones are left out and reported.
        Exclude entries that are absolute paths are taken under host_root too; patterns pass as they are.
        one_file_system: do not cross into other mounts (restic --one-file-system; see host/backup_guard.py).
        Symlinks on the way are resolved inside host_root (host/paths.py): a planted link reads nothing
        outside it; the last component, when a link, is backed up as the link."""
        where = {p: in_host_root(host_root, p, follow_last=False) for p in include}
        present = [p for p in include if where[p].exists() or where[p].is_symlink()]
        missing = [p for p in include if p not in present]
        if not present:
            raise ResticError(ResticFailure.INCLUDE_MISSING, (
                f"none of the include paths exist on this node ({', '.join(include)}): nothing backed up"))
        # the parent snapshot (what makes an incremental run skip unchanged files) is found by host and
        # paths, restic's default: the run tag differs on every snapshot and must not take part
        args = ["backup", "--host", node, "--tag", f"{BACKUP_TAG}={backup_name}", "--tag", f"{ROOT_TAG}={host_root}"]
        for tag in extra_tags:
            args += ["--tag", tag]
        if one_file_system:
            args.append("--one-file-system")
        for pattern in exclude:
            args += ["--exclude", str(in_host_root(host_root, pattern, follow_last=False))
                     if pattern.startswith("/") else pattern]
        args += [str(where[p]) for p in present]
        result = self.with_lock_retry(*args, "--json", ok_codes=(0, 3))  # 3: some files unreadable
        return _backup_result(result.stdout, missing)

    def snapshots(self, node: str | None = None, backup_name: str | None = None) -> list[Snapshot]:
        """Snapshots of one node and Backup, oldest first."""
        args = ["snapshots", "--no-lock"]
        if node:
            args += ["--host", node]
        if backup_name:
            args += ["--tag", f"{BACKUP_TAG}={backup_name}"]
        raw = self.json(*args, timeout=300) or []
        return sorted((Snapshot.model_validate(s) for s in raw), key=lambda s: s.time)

    def forget(self, retention: Retention, node: str, backup_name: str) -> Forgotten:
        """Apply retention to this node's snapshots of this Backup and prune; says what went and how many
        stayed (restic prunes only when something was removed)."""
        # one group per node and Backup: grouping by tags would make each run (its own run tag) a group
        # whose newest snapshot is always kept, and grouping by paths would split it when include changes
        args = ["forget", "--host", node, "--tag", f"{BACKUP_TAG}={backup_name}", "--group-by", "host",
                *retention_args(retention), "--prune"]
        out = self.with_lock_retry(*args, "--json").stdout
        removed: list[str] = []
        kept = 0
        for group in _json_lines_or_list(out):
            if isinstance(group, dict):
                removed += [str(s.get("id", "")) for s in (group.get("remove") or [])]
                kept += len(group.get("keep") or [])
        return Forgotten(removed, kept)

    def check(self, read_data_percent: int = 0) -> None:
        args = ["check"] + ([f"--read-data-subset={read_data_percent}%"] if read_data_percent else [])
        try:
            self.with_lock_retry(*args)
        except ResticError as exc:
            if exc.failure in (ResticFailure.FAILED, ResticFailure.CORRUPT):
                raise ResticError(ResticFailure.CORRUPT, f"integrity check of {self.repo.display()} failed: "
                                  f"{exc}") from exc
            raise

    def restore(self, snapshot_id: str, target: Path, includes: Sequence[str] = ()) -> None:
        """restic restore into target (a staging directory: callers swap it into place)."""
        args = ["restore", f"{snapshot_id}", "--target", str(target)]
        for path in includes:
            args += ["--include", path]
        self.run(*args, writes_to=target)


def _error_text(result: subprocess.CompletedProcess[str]) -> str:
    """stderr, plus the messages of the JSON exit_error/error lines restic --json prints."""
    messages = []
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        if line.startswith('{"message_type":"exit_error"') or line.startswith('{"message_type":"error"'):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            error = data.get("error")
            messages.append(str(error.get("message", "")) if isinstance(error, dict) else str(data.get("message", "")))
    plain = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    return "\n".join([*plain, *messages])


def _network_address(location: str) -> Iterator[tuple[str, int]]:
    for prefix in ("rest:", "s3:"):
        if location.startswith(prefix):
            url = urllib.parse.urlsplit(location.removeprefix(prefix))
            if url.hostname:
                yield url.hostname, url.port or (443 if url.scheme == "https" else 80)


def _json_lines_or_list(out: str) -> list[Any]:
    """The JSON documents of an output that may interleave progress lines."""
    found: list[Any] = []
    for line in out.splitlines():
        if line.startswith(("{", "[")):
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                continue
            found += parsed if isinstance(parsed, list) else [parsed]
    return found


def _backup_result(stdout: str, missing: list[str]) -> BackupResult:
    summary: BackupSummary | None = None
    warnings: list[str] = []
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        message = json.loads(line)
        if message.get("message_type") == "summary":
            summary = BackupSummary.model_validate(message)
        elif message.get("message_type") == "error":
            warnings.append(f"{message.get('item', '')}: {(message.get('error') or {}).get('message', '')}")
    if summary is None or not summary.snapshot_id:
        raise ResticError(ResticFailure.FAILED, "restic backup ended without a snapshot")
    return BackupResult(summary=summary, missing=missing, warnings=warnings)
