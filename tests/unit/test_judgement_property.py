"""No input reaches the operator's handlers as an exception (issue #18): for any spec the CRD's structural
schema admits, of every kind, the operator's judgement (validation, and the status judge() computes from
it) is Valid, or Invalid with every problem naming a field. It never raises. A NodeUpgrade judged Valid goes
on to its rollout pass, whose planning is tried too (it raised on a maxUnavailable the CEL rule alone kept
out).

Specs are drawn from the generated CRD schemas themselves (types, patterns, enums, bounds, required
fields), not from the models, so what the API server would let through is what is tried. The CEL rules
are not applied: the specs drawn are a superset of what the API server admits, which only makes the
property stronger. MACULAOS_PROPERTY_EXAMPLES raises the count per kind (CI runs a modest number).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maculaos.api import KINDS, spec_model
from maculaos.api.crd import build_crd
from maculaos.api.nodeupgrade import NodeUpgradeSpec, ReleaseTarget
from maculaos.controller.nodeupgrade import parse_reports, parse_status
from maculaos.controller.nodeupgrade_rollout import NodeFacts, RolloutInput, plan_rollout
from maculaos.controller.reconcile import judge
from maculaos.controller.validation import validate
from tests.unit.test_conditions_table import NODE, TABLE
from tests.unit.test_conditions_table import cluster as table_cluster
from tests.unit.test_validation import BACKUP, NODES, Cluster

EXAMPLES = int(os.environ.get("MACULAOS_PROPERTY_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])
#: Lists and maps drawn at most this long: the bounds in the schema are for the API server's cost
#: estimator; the judgement's branches show with a few entries.
MAX_ITEMS = 3
TEXT = st.text(alphabet=string.printable + "é\u00a0\u2028", max_size=24)
NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.timezone.utc)


def from_schema(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values an OpenAPI v3 structural schema (as in our CRDs) admits, CEL rules aside."""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if node.get("x-kubernetes-int-or-string"):
        return st.one_of(st.integers(-5, 200), TEXT)
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties") or {}
        if not props and isinstance(node.get("additionalProperties"), dict):
            values = from_schema(node["additionalProperties"])
            return st.dictionaries(st.one_of(st.sampled_from(["macula.io/site", "kubernetes.io/hostname"]), TEXT),
                                   values, max_size=MAX_ITEMS)
        required = set(node.get("required") or [])
        return st.fixed_dictionaries({k: from_schema(v) for k, v in props.items() if k in required},
                                     optional={k: from_schema(v) for k, v in props.items() if k not in required})
    if kind == "array":
        low = int(node.get("minItems", 0))
        return st.lists(from_schema(node["items"]), min_size=low, max_size=max(low, min(MAX_ITEMS,
                                                                                         node.get("maxItems", 3))))
    if kind == "string":
        longest = int(node.get("maxLength", 64))
        shortest = int(node.get("minLength", 0))
        if "pattern" in node:
            text = st.from_regex(node["pattern"], fullmatch=True)
        elif node.get("format") == "date-time":
            text = st.one_of(st.datetimes(timezones=st.just(dt.timezone.utc)).map(
                lambda t: t.isoformat().replace("+00:00", "Z")), TEXT)
        else:
            text = TEXT
        return text.filter(lambda s: shortest <= len(s) <= longest)
    if kind == "integer":
        return st.integers(node.get("minimum", -(2**31)), node.get("maximum", 2**31))
    if kind == "number":
        return st.floats(node.get("minimum"), node.get("maximum"), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"a schema node the strategy does not know: {node}")


def spec_strategy(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    schema = build_crd(spec_model(kind))["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return from_schema(schema)


def assert_judged(kind: str, spec: dict[str, Any], cluster: Cluster) -> None:
    verdict = validate(kind, "x", spec, cluster)
    for problem in verdict.problems:
        assert problem.field.startswith(("spec", "Node ")) and problem.message, problem
    body = {"kind": kind, "metadata": {"name": "x", "generation": 2, "uid": "u", "resourceVersion": "9",
                                       "creationTimestamp": "2026-06-01T10:00:00Z"},
            "spec": spec, "status": {"nodes": {n: {"phase": "Failed", "observedGeneration": 2} for n in NODES}}}
    outcome = judge(body, cluster, NOW)
    assert outcome.status is None or "conditions" in outcome.status
    if isinstance(verdict.spec, NodeUpgradeSpec) and verdict.valid:
        plan = plan_rollout(RolloutInput(
            spec=verdict.spec, status=parse_status({}), matched=verdict.matched_nodes,
            nodes={n: NodeFacts() for n in verdict.matched_nodes}, reports={}, now=NOW,
            target=ReleaseTarget(version=verdict.spec.version or "1.0.0")))
        assert plan.phase


class EverySecret(Cluster):
    """A cluster where every Secret exists with every key, so that specs get past the Secret checks and
    the rest of the judgement (Backup scheduling, Restore progress) is reached too."""

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        return AnyKey()


class AnyKey(set[str]):
    def __contains__(self, key: object) -> bool:
        return True


KINDS_WITH_SPEC = [m.resource.kind for m in KINDS if m.has_spec]


@pytest.mark.parametrize("kind", KINDS_WITH_SPEC)
def test_any_admitted_spec_is_judged_without_raising(kind: str) -> None:
    others = spec_strategy(kind) if kind == "MeshRole" else st.just({})
    backups = st.one_of(st.just(BACKUP), spec_strategy("Backup")) if kind == "Restore" else st.just(BACKUP)

    @SETTINGS
    @given(spec=spec_strategy(kind), other=others, backup=backups, every_secret=st.booleans())
    def check(spec: dict[str, Any], other: dict[str, Any], backup: dict[str, Any], every_secret: bool) -> None:
        cluster = (EverySecret if every_secret else Cluster)(
            secrets={("maculaos-system", "repo"): {"password"}}, backups={"nightly": backup},
            roles={"other": other} if other else {})
        spec = {**spec, "backupName": "nightly"} if kind == "Restore" and spec.get("backupName") else spec
        assert_judged(kind, spec, cluster)

    check()


@pytest.mark.parametrize("bad", ["", "25", "0%x", "101%", 0, -1])
def test_a_max_unavailable_the_cel_rule_refuses_is_invalid_naming_it(bad: int | str) -> None:
    """The CEL rule keeps these out at the door; an object that got past it (stored before the rule) is
    Invalid with the rule's words, not an exception in the rollout pass on every retry."""
    spec = {"version": "1.0.0", "strategy": {"maxUnavailable": bad}}
    verdict = validate("NodeUpgrade", "u", spec, Cluster())
    assert [p.field for p in verdict.problems] == ["spec.strategy.maxUnavailable"], verdict.problems
    assert verdict.problems[0].message.startswith(f"{bad!r} must be a count"), verdict.problems[0].message
    assert_judged("NodeUpgrade", spec, Cluster())


@pytest.mark.parametrize(("kind", "spec"), [
    ("Backup", {**BACKUP, "schedule": "0 0 30 2 *"}),
    ("Backup", {**BACKUP, "schedule": "0 0 31 2,4 *"}),
    ("Backup", {**BACKUP, "check": {"schedule": "0 0 30 2 *"}}),
    ("Backup", {**BACKUP, "schedule": "0 0 30 2 *", "timeZone": "Nowhere/Land"}),
])
def test_a_schedule_that_never_fires_is_invalid_naming_it(kind: str, spec: dict[str, Any]) -> None:
    cluster = Cluster(secrets={("maculaos-system", "repo"): {"password"}})
    verdict = validate(kind, "b", spec, cluster)
    field = "spec.check.schedule" if "check" in spec else "spec.schedule"
    assert field in [p.field for p in verdict.problems]
    assert "never fires" in next(p.message for p in verdict.problems if p.field == field)
    assert_judged(kind, spec, cluster)


# -- node entries: what agents report -------------------------------------------------------------------

#: Every key the operator reads with .get("...") anywhere in the controller: a node's entry may hold any of
#: them with any JSON value (its schema types only phase, message, observedGeneration and lastUpdateTime,
#: and keeps the rest), so a key the controller starts reading is tried here without naming it.
READ_KEYS = sorted(set(re.findall(r'\.get\("([A-Za-z]+)"', "".join(
    p.read_text() for p in (Path(__file__).resolve().parents[2] / "operator/maculaos/controller").glob("*.py")))))
JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=False) | TEXT
                    | st.sampled_from(["2026-06-01T11:00:00Z", "Failed", "Succeeded", "1.0.0", "r1"]),
                    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(TEXT, inner, max_size=2),
                    max_leaves=4)


def entry_strategy(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    schema = build_crd(spec_model(kind))["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    typed = schema["status"]["properties"]["nodes"]["additionalProperties"]
    kept = [k for k in READ_KEYS if k not in typed["properties"]]  # those the API server types keep their type
    return st.tuples(st.dictionaries(st.sampled_from(kept), JSON, max_size=6), from_schema(typed)).map(
        lambda parts: {**parts[0], **parts[1]})


@pytest.mark.parametrize("kind", KINDS_WITH_SPEC)
def test_any_node_entry_an_agent_may_write_is_judged_without_raising(kind: str) -> None:
    """An agent writes its own report and the operator folds it into the object: a Backup entry whose
    lastSuccessTime was no time (3, a list) made judge() raise on every pass, so the Backup's status never
    moved again. Whatever an entry holds, the object is judged."""
    spec, _, _ = TABLE[kind]

    @SETTINGS
    @given(entries=st.dictionaries(st.sampled_from([NODE, "nuc-01", "gone"]), entry_strategy(kind), max_size=3))
    def check(entries: dict[str, dict[str, Any]]) -> None:
        body = {"kind": kind, "metadata": {"name": "x", "generation": 1, "uid": "u1", "resourceVersion": "7",
                                           "creationTimestamp": "2026-06-01T11:00:00Z"},
                "spec": spec, "status": {"nodes": entries}}
        outcome = judge(body, table_cluster(), NOW)
        assert outcome.status is None or "conditions" in outcome.status
        if kind == "NodeUpgrade":
            verdict = validate(kind, "x", spec, table_cluster())
            assert isinstance(verdict.spec, NodeUpgradeSpec)
            plan_rollout(RolloutInput(
                spec=verdict.spec, status=parse_status({}), matched=verdict.matched_nodes,
                nodes={n: NodeFacts() for n in verdict.matched_nodes}, reports=parse_reports(body["status"], "u1"),
                now=NOW, target=ReleaseTarget(version="1.0.0")))

    check()


def test_a_backup_entry_whose_last_success_is_no_time_counts_as_no_success() -> None:
    """The example the property found, kept as a case of its own."""
    spec, _, _ = TABLE["Backup"]
    for bad in (3, ["2026-06-01T11:00:00Z"], "yesterday"):
        body = {"kind": "Backup", "metadata": {"name": "x", "generation": 1, "uid": "u1", "resourceVersion": "7",
                                               "creationTimestamp": "2026-06-01T11:00:00Z"},
                "spec": spec, "status": {"nodes": {NODE: {"phase": "Succeeded", "lastSuccessTime": bad}}}}
        outcome = judge(body, table_cluster(), NOW)
        assert outcome.status is not None and outcome.status["lastSuccessfulTime"] is None, bad
