"""The HealthCheck side of the agent: run each check on its interval, count consecutive failures, act at
the threshold (alert; restart capped by maxRestarts per window with doubling backoff, a failed restart
counting as one, and never against systemd's own start limit; disk clean-up), and produce this node's
entry per HealthCheck."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from maculaos.api.common import parse_duration
from maculaos.api.healthcheck import Check, CheckAction, HealthCheckSpec
from maculaos.api.times import now_rfc3339
from maculaos.host.healthcheck import ProbeResult, run_probe
from maculaos.host.healthcheck_cleanup import run_cleanup
from maculaos.host.systemd import Systemd, SystemdError

log = logging.getLogger("maculaos.agent")
PLURAL = "healthchecks"
HISTORY = 10

#: (HealthCheck name, check name, event type, reason, message) for the agent to post as an Event.
Notify = Callable[[str, str, str, str, str], None]


@dataclass
class CheckState:
    consecutive_failures: int = 0
    result: ProbeResult | None = None
    last_run: float = float("-inf")
    last_run_time: str = ""
    restarts: list[float] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    last_action: float = float("-inf")
    action_note: str = ""

    @property
    def failed(self) -> bool:
        return self.result is not None and not self.result.ok


class HealthEngine:
    """Check state per (HealthCheck, check); survives spec changes that keep the check's name."""

    def __init__(self, host_root: Path, systemd: Systemd, notify: Notify,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host_root = host_root
        self.systemd = systemd
        self.notify = notify
        self.clock = clock
        self.states: dict[tuple[str, str], CheckState] = {}

    def run_due(self, objects: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Run every check whose interval has come; return this node's entry for each HealthCheck."""
        entries = {}
        live_keys = set()
        for name, obj in sorted(objects.items()):
            try:
                spec = HealthCheckSpec.model_validate(obj.get("spec") or {})
            except ValidationError as exc:
                entries[name] = {"phase": "Invalid", "message": f"not run: {exc.errors()[0]['msg']}",
                                 "observedGeneration": obj["metadata"].get("generation")}
                continue
            for check in spec.checks:
                live_keys.add((name, check.name))
                self._run_if_due(name, check)
            entries[name] = self._entry(name, spec, obj["metadata"].get("generation"))
        for key in set(self.states) - live_keys:
            del self.states[key]
        return entries

    def _run_if_due(self, name: str, check: Check) -> None:
        state = self.states.setdefault((name, check.name), CheckState())
        now = self.clock()
        if now - state.last_run < parse_duration(check.interval).total_seconds():
            return
        state.last_run = now
        state.last_run_time = now_rfc3339()
        was_failed = state.failed and state.consecutive_failures >= check.failure_threshold
        state.result = run_probe(check, self.host_root, parse_duration(check.timeout).total_seconds(),
                                 self.systemd.systemctl)
        if state.result.ok:
            if was_failed:
                self.notify(name, check.name, "Normal", "CheckRecovered", f"{check.name}: {state.result.output}")
            state.consecutive_failures = 0
            return
        state.consecutive_failures += 1
        if state.consecutive_failures == check.failure_threshold:
            self.notify(name, check.name, "Warning", "CheckFailed", f"{check.name}: {state.result.output}")
        if state.consecutive_failures >= check.failure_threshold:
            self._act(name, check, state, now)

    def _act(self, name: str, check: Check, state: CheckState, now: float) -> None:
        cooldown = parse_duration(check.cooldown).total_seconds()
        window = parse_duration(check.restart_window).total_seconds()
        state.restarts = [t for t in state.restarts if now - t < window]
        if check.action is CheckAction.CLEANUP and now - state.last_action >= cooldown:
            state.last_action = now
            steps = run_cleanup(self.host_root, check.cleanup)
            state.action_note = "cleanup: " + "; ".join(steps)
            self._remember(state, state.action_note)
            self.notify(name, check.name, "Normal", "DiskCleanup", state.action_note)
        if not check.restart_on_failure:
            return
        unit = check.restart_unit or (check.systemd.unit if check.systemd else "")
        if len(state.restarts) >= check.max_restarts:
            self._hold(state, f"not restarting {unit}: {check.max_restarts} restart(s) within "
                              f"{check.restart_window} already; alerting only")
            return
        backoff = cooldown * (2 ** len(state.restarts)) if state.restarts else 0.0
        if now - state.last_action < backoff:
            return
        if self.systemd.start_limit_hit(unit):
            self._hold(state, f"not restarting {unit}: systemd hit its start limit "
                              f"(see `systemctl status {unit}`; `systemctl reset-failed {unit}` re-arms it)")
            return
        state.last_action = now
        state.restarts.append(now)  # a restart that fails is an attempt too: capped and backed off alike
        count = f"{len(state.restarts)}/{check.max_restarts} in {check.restart_window}"
        try:
            self.systemd.restart(unit)
        except SystemdError as exc:
            state.action_note, reason = f"restart of {unit} failed ({count}): {exc}", "RestartFailed"
        else:
            state.action_note, reason = f"restarted {unit} ({count})", "Restarted"
        self.notify(name, check.name, "Warning", reason, state.action_note)
        self._remember(state, state.action_note)

    def _hold(self, state: CheckState, note: str) -> None:
        """Note why the check no longer acts; the history gets it once, when it starts holding."""
        if note != state.action_note:
            self._remember(state, note)
        state.action_note = note

    @staticmethod
    def _remember(state: CheckState, note: str) -> None:
        state.history = [*state.history, f"{now_rfc3339()} {note}"][-HISTORY:]

    def _entry(self, name: str, spec: HealthCheckSpec, generation: int | None) -> dict[str, Any]:
        checks = {}
        failing = []
        for check in spec.checks:
            state = self.states[(name, check.name)]
            failed = state.failed and state.consecutive_failures >= check.failure_threshold
            if failed:
                failing.append(check.name)
            checks[check.name] = {
                "ok": not failed, "output": state.result.output if state.result else "",
                "consecutiveFailures": state.consecutive_failures, "lastRunTime": state.last_run_time,
                "restarts": len(state.restarts), "lastAction": state.action_note, "history": state.history,
            }
        phase = "Unhealthy" if failing else "Healthy"
        message = (f"failing: {', '.join(failing)}" if failing else f"{len(spec.checks)} check(s) passing")
        return {"phase": phase, "message": message, "observedGeneration": generation, "checks": checks}


def significant(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry without what changes on every run (times, outputs): what decides whether to report now."""
    checks = {n: {k: v for k, v in c.items() if k not in ("output", "lastRunTime")}
              for n, c in (entry.get("checks") or {}).items()}
    return {**entry, "checks": checks}

