"""The committed CRDs are exactly what the models generate, and structurally what Kubernetes wants."""

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from maculaos.api import KINDS
from maculaos.api.crd import build_crd, crd_files
from maculaos.cli import main

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def test_committed_crds_match_the_models() -> None:
    assert main(["crds", "generate", "--check", "--output", str(CRD_DIR)]) == 0, \
        "crds/ is out of date: run `maculaos crds generate`"


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    main(["crds", "generate", "--output", str(tmp_path)])
    first = sorted(tmp_path.glob("*.yaml"))[0]
    first.write_text(first.read_text().replace("description:", "description: edited", 1))
    assert main(["crds", "generate", "--check", "--output", str(tmp_path)]) == 1


def test_check_fails_on_a_leftover_file(tmp_path: Path) -> None:
    main(["crds", "generate", "--output", str(tmp_path)])
    (tmp_path / "os.macula.io_gone.yaml").write_text("{}")
    assert main(["crds", "generate", "--check", "--output", str(tmp_path)]) == 1


def _walk(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for name, prop in schema.get("properties", {}).items():
        found += _walk(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += _walk(schema["additionalProperties"], f"{path}{{}}")
    return found


@pytest.mark.parametrize("model", KINDS, ids=lambda m: m.resource.kind)
def test_every_spec_field_is_described_and_structural(model: Any) -> None:
    spec = build_crd(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in _walk(spec, "spec"):
        assert "$ref" not in node and "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if path.endswith("[]") or path.endswith("{}"):
            continue
        assert node.get("description"), f"{path} has no description"
    for path, node in _walk(spec, "spec"):
        if node.get("type") == "string":
            assert "maxLength" in node or "enum" in node or "format" in node, f"{path} is an unbounded string"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} is an unbounded list"


@pytest.mark.parametrize("model", KINDS, ids=lambda m: m.resource.kind)
def test_every_kind_is_in_the_maculaos_category_with_a_short_name(model: Any) -> None:
    names = build_crd(model)["spec"]["names"]
    assert names["categories"] == ["maculaos"]
    assert names["shortNames"]
    version = build_crd(model)["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Ready", "Age"}


def test_status_keeps_fields_kopf_and_agents_add() -> None:
    for model in KINDS:
        status = build_crd(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True
        assert "nodes" in status["properties"] and "conditions" in status["properties"]


def test_the_node_report_is_all_status_keyed_by_object() -> None:
    """NodeReport has no spec (nothing for a user to ask), a status subresource (the agent patches only
    that), and entries under a key pattern, each with the uid of the object it is about."""
    crd = yaml.safe_load(crd_files()["os.macula.io_nodereports.yaml"])
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    assert "spec" not in root["properties"] and "required" not in root
    assert version["subresources"] == {"status": {}} and crd["spec"]["scope"] == "Cluster"
    entries = root["properties"]["status"]["properties"]["entries"]
    assert entries["additionalProperties"]["required"] == ["uid", "report"]
    assert "Kind/name" in entries["x-kubernetes-validations"][0]["message"]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Objects", "Updated", "Age"]


def test_defaults_from_factories_are_written_out() -> None:
    crd = build_crd(next(m for m in KINDS if m.resource.kind == "MeshRole"))
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["bootstrapPeers"]["default"] == ["https://boot.macula.io:443"]
    assert spec["firewall"]["default"]["defaultPolicy"] == "drop"
    assert spec["firewall"]["properties"]["defaultPolicy"]["default"] == "drop"


CHART_CRD_DIR = CRD_DIR.parent / "charts" / "maculaos-crds" / "templates"


def test_chart_crds_are_the_crds_kept_on_uninstall() -> None:
    """The maculaos-crds chart's templates are crds/ plus Helm's keep policy, nothing else."""
    for plain in sorted(CRD_DIR.glob("*.yaml")):
        chart = yaml.safe_load((CHART_CRD_DIR / plain.name).read_text())
        assert chart["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert chart == yaml.safe_load(plain.read_text())
    assert sorted(p.name for p in CHART_CRD_DIR.glob("*.yaml")) == sorted(p.name for p in CRD_DIR.glob("*.yaml"))


def test_check_fails_on_a_stale_chart_template(tmp_path: Path) -> None:
    crds, chart = tmp_path / "crds", tmp_path / "templates"
    args = ["crds", "generate", "--output", str(crds), "--chart-output", str(chart)]
    main(args)
    assert main([*args, "--check"]) == 0
    first = sorted(chart.glob("*.yaml"))[0]
    first.write_text(first.read_text().replace("helm.sh/resource-policy: keep", "helm.sh/resource-policy: delete"))
    assert main([*args, "--check"]) == 1


@pytest.mark.parametrize("model", [m for m in KINDS if m.resource.kind != "NodeReport"], ids=lambda m: m.resource.kind)
def test_the_outcome_column_stands_next_to_ready_and_points_at_a_status_field(model: Any) -> None:
    crd = build_crd(model)["spec"]["versions"][0]
    shown = [c["name"] for c in crd["additionalPrinterColumns"] if not c.get("priority")]
    assert shown[shown.index("Ready") + 1] == "Outcome"
    outcome = next(c for c in crd["additionalPrinterColumns"] if c["name"] == "Outcome")
    status = crd["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert outcome["jsonPath"] == ".status.outcome" and status["outcome"]["type"] == "string"
    assert status["outcome"]["description"]


def test_counts_the_outcome_sums_up_show_only_wide() -> None:
    columns = {m.resource.kind: {c["name"]: c.get("priority", 0) for c in
                                 build_crd(m)["spec"]["versions"][0]["additionalPrinterColumns"]} for m in KINDS}
    assert columns["NodeUpgrade"]["Upgraded"] == columns["NodeUpgrade"]["Failed"] == 1
    assert columns["HealthCheck"]["Healthy"] == columns["MeshRole"]["Applied"] == 1
    assert columns["NodeUpgrade"]["Phase"] == columns["Backup"]["Last Success"] == 0


@pytest.mark.parametrize("chart", ["maculaos-crds", "maculaos-operator"])
def test_the_charts_refuse_a_kubernetes_without_the_cel_address_functions(chart: str) -> None:
    """The CRDs check addresses with CEL's isCIDR/isIP, which an API server older than 1.31 does not know:
    both charts say so, so helm refuses such a cluster by name instead of its API server failing on them."""
    rules = "".join(p.read_text() for p in CRD_DIR.glob("*.yaml"))
    assert "isCIDR(" in rules and "isIP(" in rules, "no CRD needs 1.31 any more: the charts' minimum may go down"
    helm, where = str(CRD_DIR.parent / ".tools/bin/helm"), str(CRD_DIR.parent / "charts" / chart)
    old = subprocess.run([helm, "template", where, "--kube-version", "1.30.0"], capture_output=True, text=True)
    assert old.returncode != 0 and "requires kubeVersion: >=1.31" in old.stderr, old.stderr
    new = subprocess.run([helm, "template", where, "--kube-version", "1.31.0"], capture_output=True, text=True)
    assert new.returncode == 0, new.stderr
