"""The rollout planner's property test (tests/unit/test_rollout_property.py) with more examples than CI
runs: each property over --examples random fleets and event orders (node reports in any order, reboots,
failed installs and health windows, PDB-blocked drains, time jumps, operator crashes before or after
writing status). CI runs 150 of each; the benchmark's floor is 1000.

Run: .venv/bin/python benchmarks/rollout_property.py [--examples 1000] [--seed N]

Prints, per property and in total: examples run (calls of the property; after a failure they include
the shrinker's), failures (must be 0: a failure prints hypothesis's shrunk counterexample and the script
exits 1) and wall time. No example database: every run draws anew, and --seed (printed when not given)
replays one.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the properties live with the tests

from tests.unit.rollout_sim import Fleet  # noqa: E402
from tests.unit.test_rollout_property import EVENTS, PROPERTIES, Property  # noqa: E402


def run(name: str, prop: Property, examples: int, at_seed: int) -> tuple[int, bool, float]:
    """Examples run (calls of the property body), whether it held, and seconds."""
    strategy, body = prop
    calls = 0

    def counted(fleet: Fleet, events: list[tuple[str, int]]) -> None:
        nonlocal calls
        calls += 1
        body(fleet, events)

    test = seed(at_seed)(settings(max_examples=examples, deadline=None, database=None,
                                  suppress_health_check=[HealthCheck.too_slow])(
        given(fleet=strategy, events=EVENTS)(counted)))
    started = time.perf_counter()
    try:
        test()
        held = True
    except Exception:  # noqa: BLE001 (any failure of the property is the result to report)
        traceback.print_exc()
        held = False
    return calls, held, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1000, help="per property (CI runs 150)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    at_seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"seed {at_seed}, {args.examples} examples per property")
    print("| property | examples run | failures | time |\n| --- | --- | --- | --- |")
    total_calls, total_failures, total_seconds = 0, 0, 0.0
    for name, prop in PROPERTIES.items():
        calls, held, seconds = run(name, prop, args.examples, at_seed)
        total_calls, total_failures, total_seconds = (total_calls + calls, total_failures + (not held),
                                                      total_seconds + seconds)
        print(f"| {name} | {calls} | {0 if held else 1} | {seconds:.1f} s |", flush=True)
    print(f"| **all** | {total_calls} | {total_failures} | {total_seconds:.1f} s |")
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
