"""What the boot's Python costs natively: the start of `maculaos agent apply --once` (everything it
imports, then the command line parsed) and of the hostname module, each in a fresh interpreter, for this
checkout and a baseline checkout. Under TCG every figure is ~9x (docs/benchmarks.md, "Boot time under TCG").

Run: .venv/bin/python benchmarks/boot_imports.py [--runs 15] [--baseline CHECKOUT]
Prints markdown rows for docs/benchmarks.md (median wall time of the interpreter, start to exit).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
# The apply's imports (cli/node.py's _agent_apply) and its argument parsing, without running it.
APPLY = ("import sys; from maculaos.cli import build_parser; build_parser().parse_args("
         "['agent', 'apply', '--once', '--live-systemd']); "
         "from maculaos.host import backup_server, config, firewall, mesh, systemd")
PROBES = {"agent apply --once (imports, parse)": APPLY,
          "python3 -m maculaos.host.hostname (imports)": "import maculaos.host.hostname",
          "python3 alone": "pass"}


def run(checkout: Path, code: str, runs: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout / "operator"), "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)     # warm the page cache and .pyc
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--baseline", type=Path, help="a checkout to compare with (e.g. a worktree of main)")
    args = parser.parse_args()
    print(f"| start (median of {args.runs}, native) | this checkout | baseline | ratio |")
    print("| --- | --- | --- | --- |")
    for label, code in PROBES.items():
        now = run(HERE, code, args.runs)
        base = run(args.baseline, code, args.runs) if args.baseline else None
        ratio = f"{now / base:.2f}" if base else "-"
        print(f"| {label} | {now:.3f} s | {f'{base:.3f} s' if base else '-'} | {ratio} |")


if __name__ == "__main__":
    main()
