"""Which `restic restore` command line restores one path of a snapshot fastest (issue #5): the whole
snapshot, `--include <path>`, or `<id>:<path>` (restic >= 0.17), each with `--no-cache` and with a warm
`--cache-dir`. Plain restic on the data of benchmarks/backup.py (about 1 GiB, 16 000 small files and 8 large
ones), backed up the way the agent does (the host root's /var/lib/maculaos and /var/lib/data in one
snapshot); the order of the forms rotates each round, and each restore is checked against the source.

Run: .venv/bin/python benchmarks/restore_forms.py [--rounds 3] [--workdir /tmp/maculaos-restore-forms]
Prints one markdown row per form: median wall time (and every round), median CPU time (user + system of
the restic process: what load on a shared machine does not inflate), throughput, ratio to the first form.
The data is deleted at the end.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup import MIB, PASSWORD, RESTIC, make_data  # noqa: E402


def restic(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(repo)}
    return subprocess.run([RESTIC, *args], env=env, check=True, capture_output=True, text=True)


def same_tree(a: Path, b: Path, contents: bool) -> bool:
    """Same names and sizes, and with contents the same bytes (reading 2 GiB: the first round only)."""
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    if any((a / f).stat().st_size != (b / f).stat().st_size for f in cmp.common_files):
        return False
    if contents:
        _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
        if mismatch or errors:
            return False
    return all(same_tree(a / d, b / d, contents) for d in cmp.common_dirs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/maculaos-restore-forms"))
    args = parser.parse_args()
    root: Path = args.workdir
    shutil.rmtree(root, ignore_errors=True)
    host, repo, cache = root / "host", root / "repo", root / "cache"
    data = host / "var/lib/data"
    try:
        total = make_data(data)
        (host / "var/lib/maculaos").mkdir(parents=True)
        (host / "var/lib/maculaos/config.yaml").write_text("maculaos: {}\n")
        restic(repo, "--no-cache", "init")
        restic(repo, "--cache-dir", str(cache), "backup", "--json", "--host", "bench-01",
               str(host / "var/lib/maculaos"), str(data))
        snap = restic(repo, "--no-cache", "snapshots", "--json", "latest").stdout
        snap_id = snap.split('"id":"')[1].split('"')[0]
        inside = str(data)  # absolute, as the snapshot holds it
        print(f"data: {total / MIB:.0f} MiB; restic {restic(repo, 'version').stdout.strip()}; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        forms: dict[str, tuple[list[str], Path]] = {}
        for label, cache_args in (("--no-cache", ["--no-cache"]), ("--cache-dir", ["--cache-dir", str(cache)])):
            forms[f"whole snapshot, {label}"] = ([*cache_args, "restore", snap_id], Path(inside.lstrip("/")))
            forms[f"--include <path>, {label}"] = ([*cache_args, "restore", snap_id, "--include", inside],
                                                   Path(inside.lstrip("/")))
            forms[f"<id>:<path>, {label}"] = ([*cache_args, "restore", f"{snap_id}:{inside}"], Path("."))
        times: dict[str, list[float]] = {name: [] for name in forms}
        cpu: dict[str, list[float]] = {name: [] for name in forms}
        names = list(forms)
        for i in range(args.rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                argv, restored = forms[name]
                target = root / "target"
                subprocess.run(["sync"], check=True)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                restic(repo, *argv, "--target", str(target))
                times[name].append(time.perf_counter() - started)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                print(f"    {name}: {times[name][-1]:.1f} s wall, {cpu[name][-1]:.1f} s CPU "
                      f"(load {os.getloadavg()[0]:.0f})", flush=True)
                if not same_tree(data, target / restored, contents=i == 0):
                    raise SystemExit(f"{name}: the restored tree differs from the source")
                shutil.rmtree(target)
            print(f"  round {i}: load average {os.getloadavg()[0]:.1f}", flush=True)
        base = statistics.median(times[names[0]])
        for name in names:
            med = statistics.median(times[name])
            rounds = ", ".join(f"{t:.1f}" for t in times[name])
            print(f"| {name} | {med:.1f} s ({rounds}) | {statistics.median(cpu[name]):.1f} s | "
                  f"{total / MIB / med:.0f} MiB/s | {med / base:.2f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
