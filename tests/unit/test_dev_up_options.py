"""`maculaos dev up`'s pace and fleet size options are checked before anything starts: a bad one never reaches a
half-started demo (the NodeUpgrade carrying it would be refused only at the end)."""

from __future__ import annotations

import pytest

from maculaos.cli import build_parser


def test_the_defaults_are_the_pace_a_person_watches() -> None:
    args = build_parser().parse_args(["dev", "up"])
    assert (args.upgrade_check_wait, args.upgrade_delay, args.resync_seconds, args.nodes) == ("10s", "5s", 10.0, 3)
    args = build_parser().parse_args(["dev", "up", "--upgrade-check-wait", "1m30s", "--upgrade-delay", "0s",
                                      "--resync-seconds", "2", "--nodes", "2"])
    assert (args.upgrade_check_wait, args.upgrade_delay, args.resync_seconds, args.nodes) == ("1m30s", "0s", 2.0, 2)


@pytest.mark.parametrize(("option", "value", "said"), [
    ("--upgrade-check-wait", "forever", "is not a duration such as 10s"),
    ("--upgrade-check-wait", "10", "is not a duration such as 10s"),
    ("--upgrade-delay", "5 s", "is not a duration such as 10s"),
    ("--resync-seconds", "0", "is not a number of seconds between 0 and 3600"),
    ("--resync-seconds", "soon", "is not a number of seconds between 0 and 3600"),
    ("--resync-seconds", "nan", "is not a number of seconds between 0 and 3600"),
    ("--nodes", "1", "is not a number of nodes from 2 to 9"),
    ("--nodes", "10", "is not a number of nodes from 2 to 9"),
    ("--nodes", "-3", "is not a number of nodes from 2 to 9"),
    ("--nodes", "three", "is not a number of nodes from 2 to 9"),
])
def test_a_bad_pace_is_refused_with_the_option_named(option: str, value: str, said: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["dev", "up", option, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and said in err, err
