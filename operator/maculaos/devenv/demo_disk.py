"""`maculaos dev up`'s look at the developer's own disk before anything starts.

The demo's passing HealthCheck (demo-sandbox) has a disk check: /var/lib under 95 %. A simulated node's
/var/lib is a folder of the demo's work directory, so that check measures the developer's filesystem that
holds the work directory. Fuller than the threshold, every node turns Unhealthy a minute or so after it
starts (three failed runs, 30 s apart), and the demo's NodeUpgrade, which judges upgraded nodes by that
HealthCheck, does not get past its first node: the node waits for health and is rolled back at the end of
its health commit window. With less than 64 MiB free (what a node keeps for itself when it downloads a
bundle, `host.bundles.SPARE_BYTES`) the first node's install even fails at once: so it went on a 1 GiB
tmpfs filled to 95.6 % (2026-12-07). Nothing on the screen said why.

So `dev up` warns, before it starts, and goes on; the threshold stays 95 %:

- not a refusal: the rest of the demo (the objects, the backup and restore, the tour) works on a full disk
  (it did on that tmpfs), and space freed while it runs lets the checks pass again; the person may also
  just want to look;
- not a threshold moved to fit the developer's disk: the check is the demo's picture of a real node's disk
  check, and one set above whatever the disk holds would pass by construction and show nothing. A disk
  that full is the developer's problem anyway (the demo's datastore, bundles and snapshots go there), better
  heard before than read off a stalled rollout; the warning says how to avoid it (free space, or another
  filesystem for the work directory).

The figure is the check's own (`host.healthcheck.disk_used_percent`), counted with what the demo is about to
write (DEMO_FOOTPRINT), so the warning and the nodes' check cannot disagree.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from maculaos.devenv.demo_objects import DEMO_UPGRADE, DISK_CHECK_PATH, DISK_CHECK_THRESHOLD, SANDBOX_HEALTHCHECK
from maculaos.host.bundles import SPARE_BYTES
from maculaos.host.diag_storage import MOUNT_TABLE, mounts
from maculaos.host.healthcheck import disk_used_percent

MIB = 1024 * 1024
#: What a demo writes into its work directory, with room to spare: the datastore, the node sandboxes with
#: their RAUC slots, the signed bundles, restic's repositories and the logs came to 21 MiB once the default
#: demo's rollout had ended (3 nodes, measured 2026-12-07); more nodes, the tour and a long run's logs add
#: to it.
DEMO_FOOTPRINT = 64 * MIB


def existing(path: Path) -> Path:
    """path, or the nearest folder above it that exists (the work directory may not exist yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.resolve()


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding path (which exists)."""
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def filesystem_source(mount: Path, table: Path = MOUNT_TABLE) -> str:
    """What is mounted at mount, as `findmnt` says it ("/dev/sda2 ext4"); "" when not known. The last mount
    on a path is the one seen."""
    try:
        found = [m for m in mounts(table) if m.point == str(mount)]
    except OSError:
        return ""
    return f"{found[-1].device} {found[-1].fstype}" if found else ""


@dataclass(frozen=True)
class DiskOutlook:
    """The work directory's filesystem now and once the demo has written its files."""

    used: float
    """Percent full now, as the disk check counts."""
    after: float
    """Percent full with the demo's files, as the disk check counts."""
    free_after: int
    """Bytes an ordinary user may still write then (what a node's bundle download sees)."""
    df: float
    """df's Use% now, which leaves root's reserve out."""


def outlook(where: Path, footprint: int) -> DiskOutlook:
    """How full where's filesystem is, and will be once footprint more bytes are written there."""
    usage = shutil.disk_usage(where)
    total = usage.total or 1
    return DiskOutlook(used=disk_used_percent(where),
                       after=min(100.0 * (usage.total - usage.free + footprint) / total, 100.0),
                       free_after=max(usage.free - footprint, 0),
                       df=100.0 * usage.used / ((usage.used + usage.free) or 1))


def disk_warning(workdir: Path, footprint: int = DEMO_FOOTPRINT, spare: int = SPARE_BYTES) -> str | None:
    """What to tell the person when the filesystem of workdir is, or with the demo's own files will be,
    too full for the demo's upgrade: at or above the sandbox HealthCheck's disk threshold, or with less
    free than a node keeps for itself when it downloads a bundle (`spare`). None when there is room."""
    where = existing(workdir)
    seen = outlook(where, footprint)
    checks_fail, bundles_refused = seen.after >= DISK_CHECK_THRESHOLD, seen.free_after < spare
    if not (checks_fail or bundles_refused):
        return None
    mount = mount_point(where)
    source = filesystem_source(mount)
    counted = (f" (counting the space only root may write as used, as the check does; df's Use% says "
               f"{seen.df:.0f}%)" if abs(seen.df - seen.used) >= 1 else "")
    writes = ("" if not footprint else
              f", and the demo writes about {footprint // MIB} MiB there, more than is free" if not seen.free_after
              else f", and the demo writes about {footprint // MIB} MiB there: {seen.after:.1f}%, "
                   f"{seen.free_after // MIB} MiB free")
    why = []
    if checks_fail:
        why.append(f"  - the HealthCheck {SANDBOX_HEALTHCHECK}, which judges it, fails its disk check at "
                   f"{DISK_CHECK_THRESHOLD}% and more: every node turns Unhealthy about a minute after it "
                   "starts, and the upgraded node waits for health, then is rolled back.")
    if bundles_refused:
        why.append(f"  - a node keeps {spare // MIB} MiB free for itself and refuses to download a bundle "
                   "into less: the first node's install fails at once.")
    return "\n".join([
        f"warning: the demo's nodes keep their {DISK_CHECK_PATH} in {workdir}, on the filesystem mounted at "
        f"{mount}{f' ({source})' if source else ''}, which is {seen.used:.1f}% full{counted}{writes}.",
        f"  The demo's NodeUpgrade {DEMO_UPGRADE} will not get past its first node:", *why,
        "  The rest of the demo works" + ("." if seen.free_after else " while its own files fit.") +
        f" To see the rollout, free some space on {mount}, or put the demo on another filesystem: "
        "maculaos dev up --workdir DIR (and the same --workdir for dev down)."])
