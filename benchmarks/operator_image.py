"""Operator image benchmarks: build time (warm caches, and optionally with a fresh Debian base), the
archive's compressed size against the root filesystem's, and the start of `maculaos --version` in the
image (a chroot) against the same command from the development venv.

Run (root): .venv/bin/python benchmarks/operator_image.py [--runs 3] [--cold-base]
Prints markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILDER = REPO / "image-build" / "operator-image" / "build.py"


def timed_build(output: Path, *extra: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, str(BUILDER), f"--output={output}", *extra], check=True,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def unpack(archive: Path, into: Path) -> int:
    """Extract the image's root filesystem; returns the uncompressed layer size in bytes."""
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        compressed = tar.extractfile(manifest[0]["Layers"][0]).read()  # type: ignore[union-attr]
    layer = subprocess.run(["zstd", "-d", "-q", "-c"], input=compressed, capture_output=True, check=True).stdout
    (into.parent / "layer.tar").write_bytes(layer)
    into.mkdir()
    subprocess.run(["tar", "-C", str(into), "-xpf", str(into.parent / "layer.tar")], check=True)
    return len(layer)


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold-base", action="store_true", help="also time a build with --refresh-base")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows = []
        if args.cold_base:
            rows.append(("build, fresh Debian base (mmdebstrap) and warm wheel cache",
                         f"{timed_build(out / 'cold', '--refresh-base'):.0f} s", "—"))
        warm = [timed_build(out / f"warm{i}") for i in range(args.runs)]
        rows.append((f"build, cached base and wheels (median of {args.runs})", f"{statistics.median(warm):.0f} s", "—"))
        archive = next((out / "warm0").glob("*.tar"))
        layer = unpack(archive, out / "rootfs")
        rows.append(("image archive (one zstd layer)", f"{archive.stat().st_size / 2**20:.1f} MiB",
                     f"uncompressed root filesystem {layer / 2**20:.0f} MiB "
                     f"(ratio {archive.stat().st_size / layer:.2f})"))
        image = median_seconds(["chroot", "--userspec=65532:65532", str(out / "rootfs"),
                                "/usr/local/bin/maculaos", "--version"], 7)
        venv = median_seconds([str(REPO / ".venv" / "bin" / "maculaos"), "--version"], 7)
        rows.append(("`maculaos --version` in the image (chroot, UID 65532; median of 7)", f"{image * 1000:.0f} ms",
                     f"development venv {venv * 1000:.0f} ms (ratio {image / venv:.2f})"))
        imports = "import maculaos.controller.run, maculaos.agent.runner"
        image_imports = median_seconds(["chroot", "--userspec=65532:65532", str(out / "rootfs"), "python3", "-I",
                                        "-c", imports], 5)
        venv_imports = median_seconds([str(REPO / ".venv" / "bin" / "python"), "-c", imports], 5)
        rows.append(("import the operator and agent modules in the image (median of 5)",
                     f"{image_imports * 1000:.0f} ms",
                     f"development venv {venv_imports * 1000:.0f} ms (ratio {image_imports / venv_imports:.2f})"))
    print("| what | figure | baseline (same run) |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
