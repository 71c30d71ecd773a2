"""The image builds' shared .deb cache with builds at once: a build's snapshot never changes under it, and a
reader of the cache never sees a half-written .deb while other builds publish the same names."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

from maculaos.image import debcache

SIZE = 4 << 20      # large enough that a copy takes many writes


def content(seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (SIZE // 32)


def test_a_snapshot_is_the_cache_and_stays_as_it_was(tmp_path: Path) -> None:
    cache, snap, new = tmp_path / "cache", tmp_path / "work/snap", tmp_path / "new"
    cache.mkdir()
    new.mkdir()
    (cache / "a_1_amd64.deb").write_bytes(b"a1")
    (cache / "lock").write_text("")                                # apt's own files are not .debs
    (cache / ".b_1_amd64.deb.x.part").write_bytes(b"half")        # a publish in progress elsewhere
    assert debcache.snapshot(cache, snap) == 1
    assert sorted(p.name for p in snap.iterdir()) == ["a_1_amd64.deb"]
    (new / "a_1_amd64.deb").write_bytes(b"A1-rebuilt")           # same name, other content: replaces
    (new / "b_2_amd64.deb").write_bytes(b"b2")
    (new / "partial").mkdir()
    assert debcache.publish(new, cache) == 2
    assert (snap / "a_1_amd64.deb").read_bytes() == b"a1"          # the build's snapshot: untouched
    assert (cache / "a_1_amd64.deb").read_bytes() == b"A1-rebuilt"
    assert (cache / "b_2_amd64.deb").read_bytes() == b"b2"
    assert debcache.publish(new, cache) == 0                        # already there: nothing copied
    assert not [p for p in cache.iterdir() if p.name.endswith(".part") and p.name != ".b_1_amd64.deb.x.part"]


def _publisher(new: str, cache: str, rounds: int) -> None:
    for _ in range(rounds):
        for deb in Path(cache).glob("*.deb"):
            deb.unlink(missing_ok=True)                             # force a full copy every round
        debcache.publish(Path(new), Path(cache))


def test_builds_publishing_at_once_never_expose_a_partial_deb(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    sources = []
    for build in range(2):
        new = tmp_path / f"new{build}"
        new.mkdir()
        for i in range(3):
            (new / f"pkg{i}_1_amd64.deb").write_bytes(content(i))
        sources.append(new)
    valid = {content(i) for i in range(3)}
    context = multiprocessing.get_context("fork")
    publishers = [context.Process(target=_publisher, args=(str(new), str(cache), 8)) for new in sources]
    for p in publishers:
        p.start()
    seen = 0
    try:
        while any(p.is_alive() for p in publishers):
            snap = tmp_path / f"snap{seen}"
            debcache.snapshot(cache, snap)
            for deb in snap.glob("*.deb"):
                assert deb.read_bytes() in valid, f"{deb.name}: {deb.stat().st_size} bytes, not a whole .deb"
                seen += 1
                deb.unlink()
    finally:
        for p in publishers:
            p.join(60)
    assert all(p.exitcode == 0 for p in publishers)
    assert seen > 0, "the reader never overlapped a publish"
    assert {(cache / f"pkg{i}_1_amd64.deb").read_bytes() for i in range(3)} == valid
    assert not [n for n in os.listdir(cache) if n.endswith(".part")]
