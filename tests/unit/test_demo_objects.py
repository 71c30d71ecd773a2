"""The demo's own HealthChecks are valid objects, and the failing one is capped (it cannot restart forever)."""

from __future__ import annotations

from maculaos.api.healthcheck import CheckType, HealthCheckSpec
from maculaos.devenv.demo_objects import ABSENT_UNIT, capped_healthcheck, sandbox_healthcheck


def test_the_sandbox_checks_are_the_kinds_that_hold_without_systemd() -> None:
    spec = HealthCheckSpec.model_validate(sandbox_healthcheck(api_port=6443, operator_port=9751)["spec"])
    assert {c.type for c in spec.checks} == {CheckType.TCP, CheckType.HTTP, CheckType.PROCESS, CheckType.DISK}
    assert not any(c.restart_on_failure for c in spec.checks)
    assert spec.checks[0].tcp is not None and spec.checks[0].tcp.port == 6443
    assert spec.checks[1].http is not None and spec.checks[1].http.url == "http://127.0.0.1:9751/healthz"


def test_the_failing_check_restarts_a_unit_no_machine_has_and_is_capped() -> None:
    (check,) = HealthCheckSpec.model_validate(capped_healthcheck()["spec"]).checks
    assert check.restart_on_failure and check.restart_unit == ABSENT_UNIT
    assert 1 <= check.max_restarts <= 3
