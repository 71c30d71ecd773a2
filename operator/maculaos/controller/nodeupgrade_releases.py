"""Resolve a NodeUpgrade's target release (status.target) from spec.version, spec.channel and spec.source.

A release index is JSON or YAML: ``{channels: {stable: [{version, url, sha256, size}, ...], beta: [...],
nightly: [...]}}``. It is fetched over http(s) with a timeout and a size cap, cached for
spec.checkInterval, and every failure becomes one sentence for the status that names the URL.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Annotated

import yaml
from pydantic import BaseModel, Field, ValidationError

from maculaos.api.common import parse_duration
from maculaos.api.nodeupgrade import (
    HTTP_URL_PATTERN,
    SEMVER_PATTERN,
    SHA256_PATTERN,
    Channel,
    NodeUpgradeSpec,
    ReleaseTarget,
)
from maculaos.controller.validation import version_key
from maculaos.errors import MaculaosError

FETCH_TIMEOUT = 15.0
MAX_INDEX_BYTES = 4 * 1024 * 1024
#: A failed fetch is retried after this long, not on every pass.
ERROR_RETRY_SECONDS = 30.0
#: github://owner/repo names the index attached to the repository's latest GitHub release.
GITHUB_INDEX = "https://github.com/{repo}/releases/latest/download/maculaos-index.yaml"


class ReleaseError(MaculaosError):
    """The release could not be resolved; the message is written to status as it is."""


class IndexEntry(BaseModel):
    version: Annotated[str, Field(pattern=SEMVER_PATTERN)]
    url: Annotated[str, Field(pattern=HTTP_URL_PATTERN)]
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]
    size: Annotated[int, Field(gt=0)]


class ReleaseIndex(BaseModel):
    channels: dict[Channel, list[IndexEntry]]


@dataclass(frozen=True)
class Resolution:
    target: ReleaseTarget | None
    available: str = ""
    error: str = ""


def index_url(source: str) -> str:
    if source.startswith("github://"):
        return GITHUB_INDEX.format(repo=source.removeprefix("github://").strip("/"))
    return source


def fetch_index(url: str, timeout: float = FETCH_TIMEOUT) -> ReleaseIndex:
    """Download and parse a release index; ReleaseError says what went wrong and where."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) by CRD pattern)
            raw = response.read(MAX_INDEX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise ReleaseError(f"release index {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ReleaseError(f"release index {url} unreachable: {reason}") from exc
    if len(raw) > MAX_INDEX_BYTES:
        raise ReleaseError(f"release index {url} is larger than {MAX_INDEX_BYTES} bytes")
    try:
        return ReleaseIndex.model_validate(yaml.safe_load(raw))
    except yaml.YAMLError as exc:
        raise ReleaseError(f"release index {url} is neither JSON nor YAML: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ReleaseError(f"release index {url}: {where}: {first['msg']} "
                           "(expected {channels: {stable: [{version, url, sha256, size}]}})") from exc


def pick_release(spec: NodeUpgradeSpec, index: ReleaseIndex) -> Resolution:
    """spec.version within spec.channel (any channel when unset), else the channel's newest release."""
    channels = [spec.channel] if spec.channel else list(Channel)
    entries = [e for c in channels for e in index.channels.get(c, [])]
    newest = max((e.version for e in entries), key=version_key, default="")
    where = f"channel {spec.channel.value}" if spec.channel else "any channel"
    if spec.version:
        match = next((e for e in entries if e.version.lstrip("v") == spec.version.lstrip("v")), None)
        if match is None:
            return Resolution(None, newest, f"spec.version {spec.version} is not in the release index ({where}"
                                            f"{'; newest is ' + newest if newest else ''})")
    elif not entries:
        return Resolution(None, "", f"the release index lists no release in {where}")
    else:
        match = max(entries, key=lambda e: version_key(e.version))
    target = ReleaseTarget(version=match.version, url=match.url, sha256=match.sha256, size=match.size)
    return Resolution(target, newest)


class ReleaseResolver:
    """Resolves targets, keeping fetched indexes for spec.checkInterval (in memory: a restarted operator
    fetches once more, which is harmless)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, ReleaseIndex | ReleaseError]] = {}
        self._lock = threading.Lock()

    def resolve(self, spec: NodeUpgradeSpec) -> Resolution:
        source = spec.source
        version = spec.version or ""
        if source.url:
            return Resolution(ReleaseTarget(version=version, url=source.url, sha256=source.sha256), version)
        if source.local_path:
            return Resolution(ReleaseTarget(version=version), version)
        url = index_url(source.release_index or "")
        index = self._index(url, parse_duration(spec.check_interval).total_seconds())
        if isinstance(index, ReleaseError):
            return Resolution(None, "", str(index))
        return pick_release(spec, index)

    def _index(self, url: str, max_age: float) -> ReleaseIndex | ReleaseError:
        with self._lock:
            cached = self._cache.get(url)
        now = time.monotonic()
        if cached is not None:
            fetched, value = cached
            if now - fetched < (ERROR_RETRY_SECONDS if isinstance(value, ReleaseError) else max_age):
                return value
        result: ReleaseIndex | ReleaseError
        try:
            result = fetch_index(url)
        except ReleaseError as exc:
            result = exc
        with self._lock:
            self._cache[url] = (now, result)
        return result
