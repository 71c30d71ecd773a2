"""Which firmware files the image keeps: those the image's own kernel modules name (`modinfo -F firmware`),
plus the definition's `firmware.keep` patterns, less its `firmware.drop` ones (keep wins).

Debian's firmware packages carry every version of every blob for every chip a package covers (200 MB for
the hardware profile, docs/benchmarks.md); a driver names the files it may load in its module's
`firmware=` lines. A name may be a glob (`ath11k/WCN6855/hw2.0/*`), and drivers that try API versions
from newest down (iwlwifi `iwlwifi-so-a0-gf-a0-89.ucode`, ath10k `firmware-5.bin`) name only the newest:
when that file is absent, the highest older version present is kept instead (the one the driver loads)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from maculaos.errors import MaculaosError

FIRMWARE_DIR = Path("usr/lib/firmware")
# The kernel's firmware loader also tries these suffixes (CONFIG_FW_LOADER_COMPRESS_XZ/ZSTD).
COMPRESSED = (".xz", ".zst")
# "name-NN.ext": a driver that names version NN loads the highest version <= NN present.
VERSIONED = re.compile(r"^(?P<stem>.+)-(?P<version>[0-9]+)(?P<ext>\.[A-Za-z0-9]+)$")
MODINFO_BATCH = 400


class FirmwareError(MaculaosError):
    """The firmware of a root cannot be selected (no modinfo, an unreadable module)."""


@dataclass(frozen=True)
class Selection:
    """The outcome for one firmware tree: paths relative to it (symlinks included)."""

    kept: tuple[str, ...]
    removed: tuple[str, ...]
    removed_bytes: int
    kept_bytes: int
    referenced: int
    """How many distinct `firmware=` names the modules carry."""
    initramfs_only: tuple[int, int] = (0, 0)
    """Of the kept: files and bytes removed from the root once the initramfs had them (early microcode)."""

    def describe(self) -> str:
        text = (f"kept {len(self.kept)} files ({self.kept_bytes / 1e6:.1f} MB), removed {len(self.removed)} "
                f"({self.removed_bytes / 1e6:.1f} MB) named neither by a module of this kernel nor by "
                f"firmware.keep, or dropped")
        if self.initramfs_only[0]:
            text += (f"; {self.initramfs_only[0]} of the kept ({self.initramfs_only[1] / 1e6:.1f} MB) are in "
                     f"the initramfs only")
        return text


@dataclass(frozen=True)
class Policy:
    """The definition's `firmware` section."""

    keep: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    names: frozenset[str] = field(default_factory=frozenset)
    """The modules' `firmware=` names (exact names and globs)."""


def module_firmware(root: Path, modinfo: str = "modinfo") -> set[str]:
    """Every `firmware=` name of the kernel modules under root/usr/lib/modules, loadable (`.ko*`) and
    built in (modules.builtin.modinfo), read by kmod's modinfo."""
    names: set[str] = set()
    modules_dir = root / "usr/lib/modules"
    modules = sorted(str(p) for p in modules_dir.rglob("*.ko*") if p.is_file()) if modules_dir.is_dir() else []
    for start in range(0, len(modules), MODINFO_BATCH):
        batch = modules[start:start + MODINFO_BATCH]
        try:
            result = subprocess.run([modinfo, "-F", "firmware", *batch], capture_output=True, text=True,
                                    check=False)
        except FileNotFoundError as exc:
            raise FirmwareError(f"{modinfo} not found: the kmod package provides it") from exc
        if result.returncode != 0:
            raise FirmwareError(f"modinfo failed on {batch[0]} ...: {result.stderr.strip()[:300]}")
        names.update(line.strip() for line in result.stdout.splitlines() if line.strip())
    for builtin in modules_dir.glob("*/modules.builtin.modinfo") if modules_dir.is_dir() else []:
        for entry in builtin.read_bytes().split(b"\0"):
            module, _, value = entry.decode(errors="replace").partition(".firmware=")
            if value and module:
                names.add(value)
    return names


def _plain(rel: str) -> str:
    """A firmware path as drivers name it: without the compression suffix the loader adds."""
    for suffix in COMPRESSED:
        if rel.endswith(suffix):
            return rel[: -len(suffix)]
    return rel


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    """Whether a firmware path (its compression suffix aside) matches one of the glob patterns."""
    return any(fnmatch.fnmatchcase(_plain(rel), p) for p in patterns)


def _listing(tree: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Regular files (relative path -> size) and symlinks (relative path -> target, relative to tree; a
    target outside the tree is kept as an absolute path and never removed)."""
    files: dict[str, int] = {}
    links: dict[str, str] = {}
    for top, _dirs, names in os.walk(tree):
        for name in names:
            path = Path(top) / name
            rel = path.relative_to(tree).as_posix()
            if path.is_symlink():
                target = os.path.normpath(path.parent / os.readlink(path))
                links[rel] = Path(target).relative_to(tree).as_posix() if target.startswith(f"{tree}/") else target
            else:
                files[rel] = path.lstat().st_size
    return files, links


def referenced(present: set[str], names: frozenset[str]) -> set[str]:
    """The paths among `present` (plain names, compression suffixes removed) that `names` asks for:
    exact names, glob matches, and for a versioned name that is absent the highest older version."""
    chosen: set[str] = set()
    by_stem: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for path in present:
        m = VERSIONED.match(path)
        if m:
            by_stem.setdefault((m["stem"], m["ext"]), []).append((int(m["version"]), path))
    globs = [n for n in names if any(c in n for c in "*?[")]
    for name in names:
        if name in present:
            chosen.add(name)
            continue
        m = VERSIONED.match(name)
        if m:
            older = [(v, p) for v, p in by_stem.get((m["stem"], m["ext"]), []) if v < int(m["version"])]
            if older:
                chosen.add(max(older)[1])
    if globs:
        chosen.update(p for p in present if any(fnmatch.fnmatchcase(p, g) for g in globs))
    return chosen


def select(tree: Path, policy: Policy) -> Selection:
    """Which paths of the firmware tree stay: referenced or kept by pattern and not dropped (a keep
    pattern wins over a drop one), the targets of the links that stay, and nothing else."""
    files, links = _listing(tree)
    everything = set(files) | set(links)
    plain: dict[str, list[str]] = {}
    for rel in everything:
        plain.setdefault(_plain(rel), []).append(rel)

    wanted = {rel for name in referenced(set(plain), policy.names) for rel in plain[name]}
    wanted = {rel for rel in wanted if not _matches(rel, policy.drop)}
    wanted |= {rel for rel in everything if _matches(rel, policy.keep)}
    # A link that stays keeps what it points at (through chains of links).
    todo = [rel for rel in wanted if rel in links]
    while todo:
        target = links[todo.pop()]
        if target in everything and target not in wanted:
            wanted.add(target)
            if target in links:
                todo.append(target)
    removed = sorted(set(everything) - wanted)
    return Selection(kept=tuple(sorted(wanted)), removed=tuple(removed),
                     removed_bytes=sum(files.get(r, 0) for r in removed),
                     kept_bytes=sum(files.get(r, 0) for r in wanted), referenced=len(policy.names))


def prune(root: Path, keep: list[str], drop: list[str], modinfo: str = "modinfo") -> Selection:
    """Remove from root's firmware tree what `select` does not keep, then the folders left empty."""
    tree = root / FIRMWARE_DIR
    if not tree.is_dir():
        return Selection((), (), 0, 0, 0)
    names = frozenset() if "*" in keep else frozenset(module_firmware(root, modinfo))
    policy = Policy(tuple(keep), tuple(drop), names)
    selection = select(tree, policy)
    for rel in selection.removed:
        (tree / rel).unlink()
    _remove_empty_folders(tree)
    return selection


def _remove_empty_folders(tree: Path) -> None:
    for top, _dirs, _files in os.walk(tree, topdown=False):     # children first: nested empty folders go too
        if Path(top) != tree and not any(Path(top).iterdir()):
            Path(top).rmdir()


def remove_initramfs_only(root: Path, patterns: list[str]) -> tuple[int, int]:
    """After the initramfs is built: remove the files only it needs (early microcode: the kernel has no
    late loading, so the root's copies are never read). Returns (files, bytes) removed."""
    tree = root / FIRMWARE_DIR
    if not tree.is_dir() or not patterns:
        return 0, 0
    files, links = _listing(tree)
    gone = [rel for rel in [*files, *links] if _matches(rel, patterns)]
    for rel in gone:
        (tree / rel).unlink()
    _remove_empty_folders(tree)
    return len(gone), sum(files.get(rel, 0) for rel in gone)


def main(argv: list[str]) -> int:
    """`python3 -m maculaos.image.firmware select|initramfs-only ROOT POLICY.json REPORT.json`: the build's
    steps inside mmdebstrap (customize hooks). `select` runs before the overlays (their firmware is never
    removed) and customize.sh (the initramfs is built from the kept files); `initramfs-only` after it."""
    step, root, policy_file, report_file = argv[0], Path(argv[1]), Path(argv[2]), Path(argv[3])
    policy = json.loads(policy_file.read_text())
    if step == "initramfs-only":
        count, size = remove_initramfs_only(root, policy["initramfs_only"])
        report = json.loads(report_file.read_text())
        report_file.write_text(json.dumps(report | {"initramfs_only": [count, size]}))
        print(f"[image] firmware: {count} files ({size / 1e6:.1f} MB) left the root for the initramfs only",
              file=sys.stderr, flush=True)
        return 0
    # `select: all` keeps every file: one pattern that matches them all, and no modinfo needed.
    keep = ["*"] if policy["select"] == "all" else policy["keep"]
    try:
        selection = prune(root, keep, policy["drop"])
    except FirmwareError as exc:
        print(f"[image] firmware: {exc}", file=sys.stderr)
        return 1
    report_file.write_text(json.dumps(asdict(selection)))
    print(f"[image] firmware: {selection.describe()}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
