"""The PromQL name extraction the chart's metric check relies on: what it finds and what it skips."""

from __future__ import annotations

import pytest

from tests.promql_names import defined_metrics, metric_names


@pytest.mark.parametrize("expr, names", [
    ("up", {"up"}),
    ('max by (backup, node) (maculaos_operator_backup_age_seconds{backup!="x"}) > 93600',
     {"maculaos_operator_backup_age_seconds"}),
    ("time() - max by (node) (maculaos_agent_last_converge_timestamp_seconds) > 300",
     {"maculaos_agent_last_converge_timestamp_seconds"}),
    ("histogram_quantile(0.95, sum by (le) (rate(a_bucket[$__rate_interval])))", {"a_bucket"}),
    ("count by (node) (x) unless on (node) count by (node) (y offset 5m)", {"x", "y"}),
    ('sum without (instance) (rate(c_total{job=~"a|b"}[5m])) / 1e3 and bool d', {"c_total", "d"}),
    ('label_replace(v, "dst", "$1", "src", "(.*)")', {"v"}),
])
def test_names_in_expressions(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_registries_define_both_processes_metrics_with_their_suffixes() -> None:
    names = defined_metrics()
    assert {"maculaos_operator_reconcile_passes_total", "maculaos_operator_fold_latency_seconds_bucket",
            "maculaos_nodeupgrade_nodes", "maculaos_operator_backup_age_seconds",
            "maculaos_agent_converge_passes_total", "maculaos_healthcheck_up"} <= names
    assert "maculaos_operator_reconcile_passes" not in names  # a counter is exposed with _total only
