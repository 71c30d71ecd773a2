"""Is the OS image build reproducible? Builds the boot tests' image (profiles boot,base,tools and the probe
extension) once more, with the SOURCE_DATE_EPOCH of a finished build of the same inputs, and compares the
checksums of the squashfs, kernel, initrd, rootfs tar, disk image, qcow2 and ISO (and reports the
bundle's); when the squashfs differs, unpacks both and lists the files whose content or metadata differ.

Usage: sudo .venv/bin/python benchmarks/image_reproducible.py [--shipped] [--against DIR] [--keep]
DIR: a finished build (default: the image tests' cached build of the current inputs, built first when
missing). --shipped: the shipped definition instead (every profile, the hardware firmware included, no
probe), against a build of it (`maculaos image build --out DIR`, required then). One full build:
about 10 minutes warm on this machine. The operator archive inside comes from the same cache (its own
reproducibility is checked by tests/image/test_operator_image.py)."""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from maculaos.image.build import BuildInputs, ImageBuilder, default_cache  # noqa: E402
from maculaos.image.definition import load_definition  # noqa: E402
from maculaos.image.signing import development_identity  # noqa: E402

PROFILES = ["boot", "base", "tools"]   # as tests/image/conftest.py
# Compared, and the exit status says whether they are the same; the bundle is compared and reported only.
CHECKED = ("squashfs", "kernel", "initrd", "rootfs.tar.zst", "img", "qcow2", "iso")
EXPECTED_TO_DIFFER = {"raucb": "its CMS signature carries the signing time"}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    """path -> mode, owner, times and content (or link target) of every entry."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(top) / name
            st = p.lstat()
            rel = "/" + p.relative_to(root).as_posix()
            what = os.readlink(p) if p.is_symlink() else (sha256(p) if p.is_file() else "")
            out[rel] = f"{st.st_mode:o} {st.st_uid}:{st.st_gid} {int(st.st_mtime)} {what}"
    return out


def differing_files(a: Path, b: Path, work: Path) -> list[str]:
    trees = []
    for name, squashfs in (("a", a), ("b", b)):
        subprocess.run(["unsquashfs", "-q", "-n", "-d", str(work / name), str(squashfs)], check=True)
        trees.append(tree_digest(work / name))
    first, second = trees
    return sorted(p for p in first.keys() | second.keys() if first.get(p) != second.get(p))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the second build and the unpacked trees")
    parser.add_argument("--shipped", action="store_true", help="the shipped image, not the boot tests'")
    args = parser.parse_args()
    if args.shipped and not args.against:
        parser.error("--shipped needs --against DIR (a finished `maculaos image build --out DIR`)")
    definition = load_definition(REPO / "image-build" / "maculaos.yaml") if args.shipped else load_definition(
        REPO / "image-build" / "maculaos.yaml", [REPO / "tests" / "image" / "probe-extension.yaml"]).select(PROFILES)
    inputs = BuildInputs(definition, REPO, development_identity(default_cache()))
    against = args.against or default_cache() / "builds" / inputs.digest()
    if args.against and not (against / "SHA256SUMS").exists():
        raise SystemExit(f"no finished build in {against}")
    if not args.against and not (against / "complete").exists():
        print(f"first build (as the image tests' fixture) into {against}", file=sys.stderr)
        ImageBuilder(inputs, against).build()
        (against / "complete").touch()
    info = dict(line.split("=", 1) for line in (against / definition.artifact("build-info")).read_text().splitlines())
    os.environ["SOURCE_DATE_EPOCH"] = shlex.split(info["BUILD_EPOCH"])[0]
    work = Path(tempfile.mkdtemp(prefix="image-repro-", dir=default_cache()))
    started = time.monotonic()
    ImageBuilder(inputs, work / "out").build()
    seconds = time.monotonic() - started
    rows = []
    for fmt in (*CHECKED, *EXPECTED_TO_DIFFER):
        a, b = against / definition.artifact(fmt), work / "out" / definition.artifact(fmt)
        rows.append((fmt, sha256(a), sha256(b)))
    print(f"second build: {seconds:.0f} s (SOURCE_DATE_EPOCH={os.environ['SOURCE_DATE_EPOCH']})")
    print("| artefact | size (B) | first build | second build | same |\n| --- | --- | --- | --- | --- |")
    for fmt, a_sum, b_sum in rows:
        note = f" ({EXPECTED_TO_DIFFER[fmt]})" if fmt in EXPECTED_TO_DIFFER else ""
        size = (against / definition.artifact(fmt)).stat().st_size
        print(f"| {fmt} | {size} | {a_sum[:16]} | {b_sum[:16]} | {'yes' if a_sum == b_sum else '**no**'}{note} |")
    if rows[0][1] != rows[0][2]:
        diff = differing_files(against / definition.artifact("squashfs"),
                               work / "out" / definition.artifact("squashfs"), work)
        print(f"\n{len(diff)} entries differ (content, mode, owner or time):")
        for path in diff[:80]:
            print(f"  {path}")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=True)
    return 0 if all(a == b for fmt, a, b in rows if fmt in CHECKED) else 1


if __name__ == "__main__":
    sys.exit(main())
