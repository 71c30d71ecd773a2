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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true",
                     help="also run the VM stories past the test command's time budget (marker `long`)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `long` stories skip unless asked for: CI's time limit has no room for them (each is a reboot of
    the VM node). They are named in the run's summary, so a reader sees what did not run."""
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="a long VM story: runs with --long (make test-long)")
    for item in items:
        if item.get_closest_marker("long"):
            item.add_marker(skip)


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
