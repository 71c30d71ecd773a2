"""Times as the Kubernetes API writes them: RFC 3339 in UTC, whole seconds, a trailing `Z`. One writer and
one reader for every status field, annotation and report that stores a time."""

from __future__ import annotations

import datetime as dt


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def now_rfc3339() -> str:
    return rfc3339(dt.datetime.now(dt.timezone.utc))


def parse_rfc3339(text: object) -> dt.datetime | None:
    """None for an empty value (the field was never written); a malformed one raises ValueError. A time
    without an offset is taken as UTC, so that times always compare."""
    if not text:
        return None
    when = dt.datetime.fromisoformat(str(text))
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def reported_time(value: object) -> dt.datetime | None:
    """A time a node's agent reported, or None when it is absent or no time at all: an agent writes its own
    report (a broken or hostile one anything the schema lets through), and one bad value must not stop the
    judgement of the whole object on every pass."""
    try:
        return parse_rfc3339(value) if isinstance(value, str) else None
    except ValueError:
        return None
