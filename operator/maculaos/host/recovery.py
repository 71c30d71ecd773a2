"""Recovery mode's tools (seed 4.10.1): in the rescue system the data partition is not mounted, so it can
be checked and repaired (e2fsck), the login password reset in its config.yaml, and /var/lib/maculaos
restored from the node's backup repository. Everything works on the partition itself (a block device, or
an ext4 image file mounted through a loop device): mounted only for as long as one command needs it, and
never touched while it is mounted elsewhere."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from maculaos.errors import MaculaosError
from maculaos.host.config import HostConfigError, lookup, read_config, write_keys
from maculaos.host.diag_storage import unescape_mount_field
from maculaos.host.hostname import MADE_NAME
from maculaos.host.logins import check_password_hash
from maculaos.host.rauc import Rauc
from maculaos.host.restic import Restic, ResticError, ResticFailure, Snapshot
from maculaos.host.restore import SnapshotChoice, choose_snapshot, logical_paths, restore_snapshot

DATA_LABEL = "MACULA_DATA"
DEFAULT_MOUNT_DIR = Path("/run/maculaos/recovery/data")
#: What `restore` brings back, as the node sees it (the data partition's var/ is the node's /var).
STATE = "/var/lib/maculaos"
MOUNTINFO = Path("/proc/self/mountinfo")
#: e2fsck's exit code bits (e2fsck(8)), as a person reads them.
FSCK_BITS = ((8, "e2fsck could not check it (operational error)"), (16, "e2fsck usage error"),
             (32, "cancelled"), (128, "e2fsck shared library error"))
TIMEOUT = 60.0


class RecoveryError(MaculaosError):
    """A recovery command cannot go ahead (a bad value, a partition in use); nothing was changed."""

    exit_code = 2


# -- the data partition --------------------------------------------------------------------------------


def find_device(given: str | None, blkid: str = "blkid") -> Path:
    """The data partition: the device (or ext4 image file) given, else the one labelled MACULA_DATA."""
    if given is not None:
        path = Path(given)
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise RecoveryError(f"--device {given}: {exc.strerror or exc}") from exc
        if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
            raise RecoveryError(f"--device {given}: neither a block device nor an ext4 image file")
        return path
    try:
        result = subprocess.run([blkid, "-L", DATA_LABEL], capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RecoveryError(f"cannot look for the data partition ({blkid} -L {DATA_LABEL}): {exc}") from exc
    found = result.stdout.strip()
    if result.returncode != 0 or not found:
        raise RecoveryError(f"no partition labelled {DATA_LABEL} found: give the data partition with --device")
    return Path(found)


def _device_numbers(device: Path, sys_block: Path = Path("/sys/block")) -> set[str]:
    """major:minor of the block device, or of every loop device backed by the image file."""
    st = device.stat()
    if stat.S_ISBLK(st.st_mode):
        return {f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"}
    real = os.path.realpath(device)
    found = set()
    for loop in sys_block.glob("loop*"):
        try:
            backing = (loop / "loop/backing_file").read_text().strip().removesuffix(" (deleted)")
            if backing == real:
                found.add((loop / "dev").read_text().strip())
        except OSError:
            continue  # not set up, or gone in between
    return found


def mount_points(device: Path, mountinfo: Path = MOUNTINFO) -> list[str]:
    """Where the device (or its image file, through a loop device) is mounted in this namespace."""
    numbers = _device_numbers(device)
    points = []
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[2] in numbers:
            points.append(unescape_mount_field(fields[4]))
    return points


def refuse_if_mounted(device: Path, what: str) -> None:
    points = mount_points(device)
    if points:
        raise RecoveryError(f"{device} is mounted at {', '.join(points)}: {what} needs it unmounted "
                            f"(umount {points[0]})")


@contextmanager
def mounted(device: Path, mount_dir: Path, read_only: bool = False) -> Iterator[Path]:
    """The data partition mounted read-write at mount_dir for the block's duration, unmounted after it
    (also when it fails). Refuses a partition mounted elsewhere: two mounts of one ext4 damage it.
    read_only: nothing is written, not even the journal's replay (`noload`), to a partition that may be
    damaged."""
    refuse_if_mounted(device, "this command")
    if os.path.ismount(mount_dir):
        raise RecoveryError(f"--mount-dir {mount_dir} already has a file system mounted on it: choose another")
    mount_dir.mkdir(parents=True, exist_ok=True)
    loop = ["-o", "loop"] if device.is_file() else []
    only = ["-o", "ro,noload"] if read_only else []
    result = subprocess.run(["mount", "-t", "ext4", *loop, *only, str(device), str(mount_dir)], capture_output=True,
                            text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        raise MaculaosError(f"cannot mount {device} at {mount_dir}: {result.stderr.strip()} (run "
                            "`maculaos recovery check` first)")
    try:
        yield mount_dir
    finally:
        done = subprocess.run(["umount", str(mount_dir)], capture_output=True, text=True, timeout=TIMEOUT)
        if done.returncode != 0:
            raise MaculaosError(f"{device} is still mounted at {mount_dir}: {done.stderr.strip()}; unmount it "
                                "before rebooting")


# -- check ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FsckResult:
    code: int
    words: str
    clean: bool
    """The file system is clean now (it was, or e2fsck repaired it)."""


def fsck_words(code: int, repair: bool) -> FsckResult:
    """e2fsck's exit code as a result line: 0 clean, 1/2 repaired, 4 errors left (or, without --repair,
    found), higher bits an e2fsck failure."""
    words = []
    if code == 0:
        words.append("clean")
    elif code & 4:
        words.append("errors left after the repair" if repair else
                     "errors found, nothing changed: `maculaos recovery check --repair` repairs them")
    elif code & 3:
        words.append("errors repaired, the file system is clean now")
    words += [text for bit, text in FSCK_BITS if code & bit]
    return FsckResult(code, "; ".join(words), code & ~3 == 0)


def check(device: Path, repair: bool, e2fsck: str = "e2fsck") -> FsckResult:
    """e2fsck -f on the unmounted partition: -n (read-only) or -y (repair). Its output goes straight to
    this command's, so a person sees what it found."""
    refuse_if_mounted(device, "a file system check")
    argv = [e2fsck, "-f", "-y" if repair else "-n", str(device)]
    try:
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False).returncode
    except OSError as exc:
        raise MaculaosError(f"cannot run {e2fsck}: {exc}") from exc
    return fsck_words(code, repair)


# -- password ------------------------------------------------------------------------------------------


def checked_hash(value: str) -> str:
    """A crypt(3) hash config.yaml accepts, else RecoveryError. The value is named when it looks like a
    malformed hash; anything else may be a password typed in by mistake, and is not echoed."""
    try:
        return check_password_hash(value)
    except ValueError as exc:
        shown = f" {value!r}" if value.startswith("$") else " (not shown: it may be a password)"
        raise RecoveryError(f"--hash{shown}: " + str(exc).replace("{key}", "it") + "; nothing written") from exc


def hash_password(password: str, openssl: str = "openssl") -> str:
    """A SHA-512 crypt hash ($6$, `openssl passwd -6`): the password goes by stdin, never argv."""
    if not password:
        raise RecoveryError("an empty password is not set: the console password stays as it was")
    result = subprocess.run([openssl, "passwd", "-6", "-stdin"], input=password + "\n", capture_output=True,
                            text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        raise MaculaosError(f"openssl passwd failed: {result.stderr.strip()}")
    return check_password_hash(result.stdout.strip())


def set_password(device: Path, mount_dir: Path, password_hash: str) -> bool:
    """Write password_hash into the partition's config.yaml (every other key kept); whether it changed."""
    checked_hash(password_hash)
    with mounted(device, mount_dir) as root:
        try:
            return write_keys(root, {"password_hash": password_hash})
        except HostConfigError as exc:
            raise MaculaosError(f"{exc}; nothing written") from exc


# -- restore -------------------------------------------------------------------------------------------


SNAPSHOT_ID = re.compile(r"^[0-9a-f]{4,64}$")


def snapshot_choice(value: str) -> SnapshotChoice:
    if value == "latest":
        return SnapshotChoice(latest=True)
    if not SNAPSHOT_ID.fullmatch(value):
        raise RecoveryError(f"--snapshot {value!r}: neither latest nor a snapshot id (4 to 64 hex digits, as "
                            "`restic snapshots` prints them)")
    return SnapshotChoice(snapshot_id=value)


def recorded_hostname(root: Path) -> str | None:
    """The node's name as its data partition records it (config.yaml's maculaos.hostname, else the name
    made at its first boot): what its backups are filed under. None when neither is there."""
    try:
        configured = lookup(read_config(root), "maculaos.hostname")
    except HostConfigError:
        configured = None
    if isinstance(configured, str) and configured:
        return configured
    try:
        made = (root / MADE_NAME).read_text().strip()
    except OSError:
        return None
    return made or None


def holds_state(snapshot: Snapshot) -> bool:
    """Whether the snapshot includes /var/lib/maculaos (paths as the node saw them, whatever host root the
    agent read them under)."""
    return any(PurePosixPath(STATE).is_relative_to(p) for p in logical_paths(snapshot))


@dataclass(frozen=True)
class Restored:
    snapshot: Snapshot
    node: str | None
    aside: str | None
    """Where the previous /var/lib/maculaos was moved (relative to the partition), None if there was none."""


def _pick(restic: Restic, choice: SnapshotChoice, node: str | None) -> Snapshot:
    where = restic.repo.display()
    if choice.snapshot_id:
        snapshot = choose_snapshot(restic.snapshots(), choice, where)
        if not holds_state(snapshot):
            raise ResticError(ResticFailure.SNAPSHOT_NOT_FOUND, (
                f"snapshot {snapshot.short_id} holds no {STATE} (it holds {', '.join(logical_paths(snapshot))})"))
        return snapshot
    held = [s for s in restic.snapshots(node) if holds_state(s)]
    if not held:
        of = f" of node {node}" if node else ""
        raise ResticError(ResticFailure.SNAPSHOT_NOT_FOUND, (
            f"no snapshot{of} in {where} holds {STATE}" + (" (--host chooses another node's)" if node else "")))
    return choose_snapshot(held, choice, f"{where} (node {node})" if node else where)


def restore_state(device: Path, mount_dir: Path, restic: Restic, choice: SnapshotChoice, host: str | None,
                  now: dt.datetime | None = None) -> Restored:
    """Restore /var/lib/maculaos into the partition's var/lib/maculaos. The folder there is moved aside
    first (kept, never deleted) and moved back when restic fails; nothing else on the partition changes.
    host: the node whose snapshots `latest` picks from (None: the name the partition records, if any)."""
    with mounted(device, mount_dir) as root:
        node = host or recorded_hostname(root)
        try:
            snapshot = _pick(restic, choice, node)
        except ResticError as exc:
            raise ResticError(exc.failure, f"{_plain(exc)}; nothing restored") from exc
        state = root / STATE.lstrip("/")
        aside: Path | None = None
        if state.exists() or state.is_symlink():
            stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
            aside = state.with_name(f"{state.name}.before-restore-{stamp}")
            suffix = 1
            while aside.exists():
                aside, suffix = state.with_name(f"{state.name}.before-restore-{stamp}-{suffix}"), suffix + 1
            os.rename(state, aside)
        try:
            restore_snapshot(restic, snapshot, root, [STATE])
        except BaseException as exc:
            if aside is not None and not (state.exists() or state.is_symlink()):
                os.rename(aside, state)
            if isinstance(exc, ResticError):
                kept = f"{STATE} is back as it was" if aside is not None else "nothing restored"
                raise ResticError(exc.failure, f"{_plain(exc)}; {kept}") from exc
            raise
        return Restored(snapshot, node, str(aside.relative_to(root)) if aside is not None else None)


def _plain(exc: ResticError) -> str:
    """restic's error in recovery's words: a wrong password here is one typed in, not a cluster Secret."""
    if exc.failure is ResticFailure.WRONG_PASSWORD:
        return "wrong repository password: give the password of the node's Backup repository (RESTIC_PASSWORD " \
               "or --password-file)"
    return str(exc)


# -- status --------------------------------------------------------------------------------------------


def dumpe2fs_fields(device: Path, dumpe2fs: str = "dumpe2fs") -> dict[str, str]:
    """The superblock's fields (`dumpe2fs -h`), {} when it cannot be read (not ext4, damaged)."""
    try:
        result = subprocess.run([dumpe2fs, "-h", str(device)], capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    fields = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields if result.returncode == 0 else {}


def size_of(device: Path) -> int:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{value:.1f} TiB"


def partition_lines(device: Path) -> list[str]:
    """The data partition in a few lines: device, label, size, file system state, where it is mounted."""
    fields = dumpe2fs_fields(device)
    label = fields.get("Filesystem volume name", "")
    lines = [f"data partition: {device} (label {label or 'none'}, {human_size(size_of(device))})"]
    if not fields:
        lines.append("file system: not readable as ext4 (`maculaos recovery check` says more)")
    else:
        lines.append(f"file system: ext4, {fields.get('Filesystem state', 'state unknown')}")
    points = mount_points(device)
    lines.append(f"mounted: at {', '.join(points)}" if points else "mounted: no")
    return lines


def slot_lines(rauc: Rauc) -> list[str]:
    """The A/B slots as RAUC sees them; one line saying why not when it cannot tell (never an error)."""
    try:
        status = rauc.status(timeout=10.0)
    except (MaculaosError, OSError, ValueError) as exc:
        return [f"slots: unknown ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"]
    lines = []
    for slot in status.slots:
        booted = ", booted now" if slot.bootname and slot.bootname == status.booted else ""
        version = f" {slot.version}" if slot.version else ""
        lines.append(f"slot {slot.bootname or slot.name} ({slot.name}):{version} {slot.state}, "
                     f"{slot.boot_status or 'boot status unknown'}{booted}")
    return lines or ["slots: RAUC lists none"]
