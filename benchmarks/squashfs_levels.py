"""The root's zstd level: size and pack time of a built squashfs packed again at each level, and what a
cold Python start pays to read it (the boot path's imports, page cache dropped before each run).

Usage (root: loop mounts): .venv/bin/python benchmarks/squashfs_levels.py SQUASHFS [--levels 9,15]
[--block 262144] [--runs 7]
The levels' imports alternate run by run so that a change of load hits both alike; medians are quoted.
Prints markdown tables for docs/benchmarks.md. It is what `build.SQUASHFS_ZSTD_LEVEL` rests on: run it on
a fresh build of the shipped image when the root grows or the ISO nears its 300 MB budget."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

IMPORTS = "import maculaos.cli, maculaos.agent, pydantic, yaml"


def cold_import(squashfs: Path, mnt: Path) -> tuple[float, float]:
    """(wall, kernel) seconds of the boot path's imports from a fresh mount with the page cache dropped."""
    subprocess.run(["mount", "-o", "loop,ro", str(squashfs), str(mnt)], check=True)
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        out = subprocess.run(["/usr/bin/time", "-f", "%e %S", "chroot", str(mnt), "python3", "-c", IMPORTS],
                             capture_output=True, text=True, check=True).stderr.split()
        return float(out[-2]), float(out[-1])
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("squashfs", type=Path)
    parser.add_argument("--levels", default="9,15")
    parser.add_argument("--block", type=int, default=256 * 1024)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    with tempfile.TemporaryDirectory(dir=args.squashfs.parent) as tmp:
        work = Path(tmp)
        subprocess.run(["unsquashfs", "-q", "-n", "-d", str(work / "root"), str(args.squashfs)], check=True,
                       stdout=subprocess.DEVNULL)
        packed: dict[int, Path] = {}
        print("| zstd level | squashfs (B) | pack time |\n| --- | --- | --- |")
        for level in levels:
            packed[level] = work / f"level{level}.squashfs"
            started = time.monotonic()
            subprocess.run(["mksquashfs", str(work / "root"), str(packed[level]), "-comp", "zstd",
                            "-Xcompression-level", str(level), "-b", str(args.block), "-noappend", "-quiet",
                            "-no-progress"], check=True, stdout=subprocess.DEVNULL)
            print(f"| {level} | {packed[level].stat().st_size:,} | {time.monotonic() - started:.1f} s |")
        mnt = work / "mnt"
        mnt.mkdir()
        times: dict[int, list[tuple[float, float]]] = {level: [] for level in levels}
        for _ in range(args.runs):
            for level in levels:
                times[level].append(cold_import(packed[level], mnt))
        print(f"\n| zstd level | cold import, wall (median of {args.runs}) | kernel time (median) |\n"
              "| --- | --- | --- |")
        for level in levels:
            print(f"| {level} | {statistics.median(w for w, _ in times[level]):.2f} s | "
                  f"{statistics.median(k for _, k in times[level]):.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
