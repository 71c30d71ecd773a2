"""Getting a RAUC bundle onto the node: download it to the data partition (free space checked first: before
connecting when the release gives the size, as a release index does, else by the response's Content-Length;
resumed after a dropped connection, size and SHA-256 verified), or find it in a local directory (USB stick,
airgap) by its manifest version. Nothing here touches a slot, and nothing is left on the data partition by a
download that gave up."""

from __future__ import annotations

import errno
import hashlib
import http.client
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from maculaos.errors import MaculaosError
from maculaos.host.rauc import BundleInfo, Rauc, RaucError

CHUNK = 256 * 1024
#: Room kept free on the data partition beyond the bundle itself (logs, k3s, the node's own data).
SPARE_BYTES = 64 * 1024 * 1024

#: progress(bytes so far, total bytes or None)
DownloadProgress = Callable[[int, int | None], None]


class BundleError(MaculaosError):
    """A RAUC bundle could not be got, is not the one asked for, or (on the build machine,
    maculaos.image.bundle) could not be made; the message says which and why."""


@dataclass(frozen=True)
class Release:
    """What the node is asked to install: the status.target of a NodeUpgrade."""

    version: str
    url: str | None = None
    sha256: str | None = None
    size: int | None = None


def bundle_path(directory: Path, version: str) -> Path:
    return directory / f"maculaos-{version}.raucb"


def download(release: Release, directory: Path, progress: DownloadProgress | None = None,
             attempts: int = 3, timeout: float = 30.0) -> Path:
    """Fetch release.url into directory and return the verified file.

    A dropped connection is resumed (HTTP Range) from <file>.part; the download gives up after `attempts`
    drops in a row that brought no new byte (one that brought some starts the count again, so a flaky link
    gets there). Giving up deletes the partial file: no retry may ever come (a failed node waits for a new
    grant, a new target downloads another file), and a few hundred MB of it would sit on a small data
    partition the node needs. A partial file an interrupted agent left (restart, power cut) is resumed by
    the next call for the same release. A file that fails verification is deleted. Raises BundleError with
    what went wrong."""
    if not release.url:
        raise BundleError(f"target {release.version} has no url to download from")
    directory.mkdir(parents=True, exist_ok=True)
    final = bundle_path(directory, release.version)
    _prune(directory, keep=final)
    if final.exists():
        try:
            _verify(final, release, _sha256_of(final))
            return final
        except BundleError:
            final.unlink()
    part = final.with_name(final.name + ".part")
    if release.size is not None:  # the release says how big: refused before a connection is even made
        _check_space(directory, release.size - (part.stat().st_size if part.exists() else 0), release)
    last: Exception | None = None
    fruitless, most = 0, _size(part)
    while fruitless < max(1, attempts):
        try:
            digest = _fetch(release, part, directory, progress, timeout)
        except _Dropped as exc:
            last = exc
            have = _size(part)
            fruitless = 0 if have > most else fruitless + 1
            most = max(most, have)
            continue
        _verify(part, release, digest)
        part.replace(final)
        return final
    have = _size(part)
    part.unlink(missing_ok=True)
    total = f" of {release.size}" if release.size else ""
    raise BundleError(f"download of {release.url} dropped after {have}{total} bytes ({attempts} attempts in a row "
                      f"without progress: {last}); the partial file is deleted, the next try starts over")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _prune(directory: Path, keep: Path) -> None:
    """One bundle at a time on the data partition: files of other versions (an install that failed, a
    download an older agent left) can never be installed from here again and would only take its space."""
    for path in directory.glob("maculaos-*.raucb*"):
        if path not in (keep, keep.with_name(keep.name + ".part")):
            path.unlink(missing_ok=True)


class _Dropped(Exception):
    """The connection ended before the whole file arrived: worth resuming."""


def _fetch(release: Release, part: Path, directory: Path, progress: DownloadProgress | None,
           timeout: float) -> str:
    """One HTTP request, resuming part; returns the SHA-256 of the whole file."""
    assert release.url is not None
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(release.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        # nothing left to send: the part is the whole file (or junk)
        if exc.code == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE and have:
            return _sha256_of(part)
        raise BundleError(f"download of {release.url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _Dropped(f"cannot connect: {getattr(exc, 'reason', exc)}") from exc
    with response:
        resumed = response.status == HTTPStatus.PARTIAL_CONTENT
        length = response.headers.get("Content-Length")
        total = release.size or ((int(length) + (have if resumed else 0)) if length else None)
        _check_space(directory, (total or 0) - (have if resumed else 0), release)
        digest = _hash_file(part, hashlib.sha256()) if resumed else hashlib.sha256()
        done = have if resumed else 0
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (http.client.IncompleteRead, OSError) as exc:
                        raise _Dropped(f"connection lost after {done} bytes: {type(exc).__name__}") from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if release.size is not None and done > release.size:
                        part.unlink()
                        raise BundleError(f"download of {release.url} is larger than the expected {release.size} "
                                          "bytes: not the release asked for (file deleted)")
                    if progress is not None:
                        progress(done, total)
        except OSError as exc:  # writing (or the flush on close) failed: the disk, not the connection
            part.unlink(missing_ok=True)
            raise _write_failed(exc, release, directory, done, total) from exc
        if total is not None and done < total:
            raise _Dropped(f"connection closed after {done} of {total} bytes")
    return digest.hexdigest()


def _write_failed(exc: OSError, release: Release, directory: Path, done: int, total: int | None) -> BundleError:
    """The partial file is deleted (kept, it would hold the space the node needs and could not be resumed
    anyway until space is freed); the message names the cause and the place."""
    of = f" of {total}" if total else ""
    cause = "no space left on the device" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
        f"cannot write there ({exc.strerror or exc})"
    return BundleError(f"download of {release.version} into {directory} stopped after {done}{of} bytes: {cause} "
                       "(partial file deleted; free space and the next try starts over)")


def _check_space(directory: Path, needed: int, release: Release) -> None:
    """Before the first byte is written: a bundle that cannot fit is refused, not found out half way."""
    free = shutil.disk_usage(directory).free
    if needed + SPARE_BYTES > free:
        raise BundleError(f"not enough space for {release.version} in {directory}: the bundle needs "
                          f"{_mib(needed)} and {_mib(SPARE_BYTES)} stay free for the node, {_mib(free)} are free; "
                          f"free space on the data partition, or install from a directory "
                          "on the node (spec.source.localPath)")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _sha256_of(path: Path) -> str:
    return _hash_file(path, hashlib.sha256()).hexdigest()


def _hash_file(path: Path, digest: hashlib._Hash) -> hashlib._Hash:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest


def _verify(path: Path, release: Release, digest: str) -> None:
    size = path.stat().st_size
    if release.size is not None and size != release.size:
        path.unlink()
        raise BundleError(f"bundle for {release.version} is {size} bytes, the release says {release.size} "
                          "(file deleted)")
    if release.sha256 and digest != release.sha256.lower():
        path.unlink()
        raise BundleError(f"sha256 mismatch for {release.version}: expected {release.sha256}, got {digest} "
                          "(file deleted; the bundle was not installed)")


def local_bundles(directory: Path, rauc: Rauc) -> dict[Path, BundleInfo | None]:
    """The manifest of each *.raucb in directory (None for one RAUC cannot read), read unverified: the
    signature is checked by the install itself, before it writes anything."""
    if not directory.is_dir():
        raise BundleError(f"source directory {directory} does not exist on this node")
    try:
        rauc.node_path(directory)
    except RaucError as exc:
        raise BundleError(str(exc)) from None
    found: dict[Path, BundleInfo | None] = {}
    for path in sorted(directory.glob("*.raucb")):
        try:
            found[path] = rauc.info(path, verify=False)
        except RaucError:
            found[path] = None
    return found


def newest(bundles: dict[Path, BundleInfo | None]) -> str:
    """The highest version among them (numeric dotted comparison), "" when there is none."""
    def key(version: str) -> tuple[int, ...]:
        core = re.split(r"[-+]", version.lstrip("v"), maxsplit=1)[0]
        return tuple(int(p) if p.isdigit() else -1 for p in core.split("."))
    readable = [i.version for i in bundles.values() if i is not None and i.version]
    return max(readable, key=key) if readable else ""


def find_local(directory: Path, version: str, rauc: Rauc) -> tuple[Path, BundleInfo]:
    """The bundle in directory whose manifest version is version, with its manifest."""
    bundles = local_bundles(directory, rauc)
    for path, info in bundles.items():
        if info is not None and info.version == version:
            return path, info
    listing = ", ".join(f"{p.name}: {i.version if i else 'unreadable'}" for p, i in bundles.items())
    raise BundleError(f"no bundle of version {version} in {directory} ({listing or 'no *.raucb files'})")
