"""The metric names a PromQL expression reads, and every name the operator's and the agent's registries
can expose: for the check that the chart's alerts and dashboard name only metrics that exist."""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import REGISTRY
from prometheus_client.core import Metric

#: Words of PromQL that look like metric names: operators, modifiers and the like.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "atan2", "start", "end"}
#: Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (functions, label names, strings and keywords skipped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word, rest = match.group(), text[match.end():]
        start = match.start()
        if start and (text[start - 1].isdigit() or text[start - 1] in ".$"):
            continue  # the unit of a duration (5m), a number's exponent, a Grafana variable
        if word.lower() in KEYWORDS or rest.lstrip().startswith("("):
            continue  # a function or aggregation
        names.add(word)
    return names


def sample_names(families: Iterable[Metric]) -> set[str]:
    """Every sample name the families can produce: a counter's _total, a histogram's _bucket..."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}
    return {f.name + s for f in families for s in suffixes.get(f.type, ("",))}


def defined_metrics() -> set[str]:
    """What the operator and the agent define: their modules' metrics on the default registry, and the
    operator's fleet collector."""
    import maculaos.agent.metrics  # noqa: F401 (registers the agent's metrics)
    import maculaos.controller.metrics  # noqa: F401 (registers the operator's)
    from maculaos.controller.fleet_metrics import Fleet

    return sample_names(REGISTRY.collect()) | sample_names(Fleet().collect())
