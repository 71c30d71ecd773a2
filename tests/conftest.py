"""Fixture modules shared across levels, and the suite's time by level (tests/<level>/...), printed at the
end of every run: where CI's time goes."""

from __future__ import annotations

from collections import defaultdict

import pytest
from _pytest.terminal import TerminalReporter

# One registration each: a session fixture (the signed bundles) is then built once per run, not once per
# module that imports it.
pytest_plugins = ["tests.host.rauc_fixtures", "tests.integration.rauc_fleet", "tests.unit.grub_esp"]

_seconds: defaultdict[str, float] = defaultdict(float)
_counts: defaultdict[str, int] = defaultdict(int)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    parts = report.nodeid.split("/")
    level = parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"
    _seconds[level] += report.duration          # setup, call and teardown: fixtures (builds, boots) count
    if report.when == "call" or (report.when == "setup" and report.skipped):
        _counts[level] += 1


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not _seconds:
        return
    terminalreporter.section("time by level")
    for level, seconds in sorted(_seconds.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{level:<12} {_counts[level]:>4} tests  {seconds / 60:6.1f} min")
