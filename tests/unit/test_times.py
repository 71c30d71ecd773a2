"""api/times: the one writer and reader of the API's times."""

import datetime as dt

import pytest

from maculaos.api.times import now_rfc3339, parse_rfc3339, rfc3339


def test_written_as_kubernetes_writes_them() -> None:
    when = dt.datetime(2026, 1, 15, 9, 30, 5, 999_000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert rfc3339(when) == "2026-01-15T07:30:05Z"


def test_read_back_equal_and_in_utc() -> None:
    text = now_rfc3339()
    assert text.endswith("Z") and rfc3339(parse_rfc3339(text) or dt.datetime.min) == text
    assert parse_rfc3339("2026-01-15T07:30:05+01:00") == dt.datetime(2026, 1, 15, 6, 30, 5, tzinfo=dt.timezone.utc)


def test_a_time_without_offset_is_utc_so_it_compares() -> None:
    naive = parse_rfc3339("2026-01-15T07:30:05")
    assert naive is not None and naive.tzinfo is not None
    assert naive < dt.datetime.now(dt.timezone.utc)


@pytest.mark.parametrize("empty", [None, ""])
def test_never_written_is_none(empty: object) -> None:
    assert parse_rfc3339(empty) is None


@pytest.mark.parametrize("bad", ["yesterday", "2026-02-30T00:00:00Z", "15/01/2026"])
def test_malformed_raises_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(bad)
