"""The API models: parsing, selectors, durations and percentages."""

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from maculaos.api import MeshRoleSpec, NodeUpgradeSpec, spec_model
from maculaos.api.common import LabelSelectorRequirement, NodeSelector, parse_duration, parse_percent


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25),
                                               ("0s", 0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "5d", "-5s", "1.5h", "s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["h", "m", "s"])), min_size=1, max_size=3))
def test_parse_duration_adds_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{u}" for n, u in parts)
    expected = sum(n * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    assert parse_duration(text).total_seconds() == expected


def test_parse_percent() -> None:
    assert parse_percent("25%") == 25
    assert parse_percent("100%") == 100
    for bad in ("101%", "25", "-1%", "1.5%"):
        with pytest.raises(ValueError):
            parse_percent(bad)


def test_selector_semantics_match_kubernetes() -> None:
    labels = {"macula.io/site": "warehouse", "kubernetes.io/arch": "amd64"}
    assert NodeSelector().matches(labels)
    assert NodeSelector(match_labels={"macula.io/site": "warehouse"}).matches(labels)
    assert not NodeSelector(match_labels={"macula.io/site": "shop"}).matches(labels)

    def req(op: str, *values: str) -> NodeSelector:
        return NodeSelector(match_expressions=[LabelSelectorRequirement.model_validate(
            {"key": "kubernetes.io/arch", "operator": op, "values": list(values)})])

    assert req("In", "amd64", "arm64").matches(labels)
    assert not req("NotIn", "amd64").matches(labels)
    assert req("NotIn", "arm64").matches(labels)
    assert req("NotIn", "arm64").matches({})
    assert req("Exists").matches(labels) and not req("Exists").matches({})
    assert req("DoesNotExist").matches({}) and not req("DoesNotExist").matches(labels)


def test_models_read_camel_case_and_refuse_unknown_fields() -> None:
    spec = MeshRoleSpec.model_validate({"roles": ["gateway"], "tlsMode": "production"})
    assert spec.tls_mode == "production"
    with pytest.raises(ValidationError, match="tls_mode|tlsmode"):
        MeshRoleSpec.model_validate({"tls_mode": "production", "tlsmode": "x"})


def test_int_or_percent_accepts_both() -> None:
    assert NodeUpgradeSpec.model_validate({"version": "1.0.0", "strategy": {"maxUnavailable": "25%"}})
    assert NodeUpgradeSpec.model_validate({"version": "1.0.0", "strategy": {"maxUnavailable": 3}})


def test_spec_model_lookup() -> None:
    assert spec_model("MeshRole") is MeshRoleSpec
    with pytest.raises(KeyError):
        spec_model("Pod")
