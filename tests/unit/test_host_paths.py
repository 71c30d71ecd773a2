"""Every host path a resource names is canonical (issue #18): refused at the door by the CRD's pattern and,
where the API server is bypassed, by the operator's judgement naming the field; and a Restore never lands
on the system nor asks for what its Backup never held."""

import re
from typing import Any

import pytest

from maculaos.api import KINDS, spec_model
from maculaos.api.backup import RestoreSpec, restore_refusals, system_directory
from maculaos.api.common import EXCLUDE_PATTERN, HOST_PATH_HINT, HOST_PATH_PATTERN
from maculaos.api.crd import build_crd
from maculaos.controller.validation import validate
from tests.unit.test_validation import BACKUP, Cluster

BAD_PATHS = ["/var/../etc", "/..", "/var/lib/..", "/var//lib", "//var", "/var/./lib", "/var/lib/.", "/.",
             "var/lib", "", "/var/lib/", "/var/lib\x00/x"]
GOOD_PATHS = ["/", "/var/lib/data", "/var/lib/.hidden", "/var/lib/..data", "/srv/a b/c..d"]

SECRETS = {("maculaos-system", "repo"): {"password"}}
CHECK = {"name": "c", "type": "disk", "disk": {"path": "/var/lib"}}

#: Every field naming a host path: (kind, spec with the path in place of PATH, the field's path).
PATH_FIELDS: list[tuple[str, Any, str]] = [
    ("Backup", {**BACKUP, "include": ["PATH"]}, "spec.include[0]"),
    ("Backup", {**BACKUP, "exclude": ["PATH"]}, "spec.exclude[0]"),
    ("Backup", {**BACKUP, "target": {"local": {"path": "PATH"}}}, "spec.target.local.path"),
    ("Restore", {"backupName": "nightly", "nodeName": "pi-03", "snapshot": {"latest": True}, "paths": ["PATH"]},
     "spec.paths[0]"),
    ("Restore", {"backupName": "nightly", "nodeName": "pi-03", "snapshot": {"latest": True}, "targetPath": "PATH"},
     "spec.targetPath"),
    ("NodeUpgrade", {"version": "1.0.0", "source": {"localPath": "PATH"}}, "spec.source.localPath"),
    ("HealthCheck", {"checks": [{"name": "p", "type": "process", "process": {"pidFile": "PATH"}}]},
     "spec.checks[0].process.pidFile"),
    ("HealthCheck", {"checks": [{**CHECK, "disk": {"path": "PATH"}}]}, "spec.checks[0].disk.path"),
]


def _with(value: Any, path: str) -> Any:
    if value == "PATH":
        return path
    if isinstance(value, dict):
        return {k: _with(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_with(v, path) for v in value]
    return value


def _cluster() -> Cluster:
    return Cluster(secrets=dict(SECRETS), backups={"nightly": {**BACKUP, "include": ["/"],
                                                               "nodeSelector": {"matchLabels": {}}}})


def _crd_pattern(kind: str, field: str) -> str:
    node = build_crd(spec_model(kind))["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in re.findall(r"\.?([A-Za-z0-9]+)(\[0\])?", field):
        node = node["properties"][part[0]]
        if part[1]:
            node = node["items"]
    return str(node["pattern"])


@pytest.mark.parametrize(("kind", "spec", "field"), PATH_FIELDS, ids=[f[2] for f in PATH_FIELDS])
@pytest.mark.parametrize("bad", BAD_PATHS, ids=repr)
def test_a_non_canonical_path_is_invalid_naming_its_field(kind: str, spec: Any, field: str, bad: str) -> None:
    if field == "spec.exclude[0]" and bad == "var/lib":
        pytest.skip("a relative exclude is a restic pattern")
    problems = validate(kind, "x", _with(spec, bad), _cluster()).problems
    assert [p.field for p in problems] == [field], problems
    assert HOST_PATH_HINT in problems[0].message and "pattern" not in problems[0].message
    assert re.search(_crd_pattern(kind, field), bad) is None, "the CRD must refuse it at the door too"


@pytest.mark.parametrize(("kind", "spec", "field"), PATH_FIELDS, ids=[f[2] for f in PATH_FIELDS])
@pytest.mark.parametrize("good", GOOD_PATHS)
def test_a_canonical_path_passes(kind: str, spec: Any, field: str, good: str) -> None:
    problems = validate(kind, "x", _with(spec, good), _cluster()).problems
    if kind == "Restore" and good == "/":  # canonical, but a restore never writes over the root
        assert [p.reason for p in problems] == ["RestoreRefused"]
    else:
        assert field not in [p.field for p in problems]
    assert re.search(_crd_pattern(kind, field), good)


def test_every_path_field_of_every_kind_is_canonical() -> None:
    """A field whose description speaks of a path or directory uses the one shared type (or the exclude
    pattern): a new path field cannot forget it."""
    found = []
    for model in KINDS:
        spec = build_crd(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"].get("spec", {})
        stack: list[tuple[str, dict[str, Any]]] = [("spec", spec)]
        while stack:
            where, node = stack.pop()
            for name, prop in (node.get("properties") or {}).items():
                stack.append((f"{where}.{name}", prop))
            if isinstance(node.get("items"), dict):
                stack.append((f"{where}[]", node["items"]))
            leaf = node.get("items", node) if node.get("type") == "array" else node
            if leaf.get("type") == "string" and re.search(r"\b(path|paths|directory|pidfile)\b",
                                                          str(node.get("description", "")), re.I):
                found.append((model.resource.kind, where, leaf.get("pattern")))
    assert found
    for kind, where, pattern in found:
        assert pattern in (HOST_PATH_PATTERN, EXCLUDE_PATTERN), f"{kind} {where} is a path without HostPath"


@pytest.mark.parametrize("bad", ["../etc", "cache/../../etc", "a//b", "./x", "x/.", "a/", "/a/..", "*\x00"])
def test_an_exclude_pattern_never_climbs(bad: str) -> None:
    problems = validate("Backup", "b", {**BACKUP, "exclude": [bad]}, _cluster()).problems
    assert [p.field for p in problems] == ["spec.exclude[0]"]


@pytest.mark.parametrize("good", ["*.tmp", "cache/*", "/var/log/*.gz", ".cache"])
def test_an_exclude_pattern_may_be_relative(good: str) -> None:
    assert validate("Backup", "b", {**BACKUP, "exclude": [good]}, _cluster()).valid


# -- restores never land on the system ---------------------------------------------------------------------

def restore(**spec: Any) -> dict[str, Any]:
    return {"backupName": "nightly", "nodeName": "pi-03", "snapshot": {"latest": True}, **spec}


def restore_cluster(include: list[str]) -> Cluster:
    return Cluster(secrets=dict(SECRETS), backups={"nightly": {**BACKUP, "include": include}})


@pytest.mark.parametrize(("include", "spec", "field", "words"), [
    (["/var/lib/data"], restore(paths=["/var/lib/maculaos/x"]), "spec.paths[0]",
     "not under any path Backup nightly includes (/var/lib/data)"),
    (["/var/lib/data"], restore(paths=["/var/lib/data2"]), "spec.paths[0]", "not under any path"),
    (["/var/lib/data"], restore(targetPath="/"), "spec.targetPath", "/ is the node's root"),
    (["/var/lib/data"], restore(targetPath="/etc"), "spec.targetPath", "/etc is inside /etc, a system directory"),
    (["/var/lib/data"], restore(targetPath="/usr/local/r"), "spec.targetPath", "inside /usr"),
    (["/var/lib/data"], restore(targetPath="/lib64"), "spec.targetPath", "inside /lib64"),
    (["/var/lib/data"], restore(targetPath="/boot/r"), "spec.targetPath", "inside /boot"),
    (["/var/lib/data"], restore(targetPath="/proc"), "spec.targetPath", "inside /proc"),
    (["/var/lib/data"], restore(targetPath="/run/x"), "spec.targetPath", "inside /run"),
    (["/"], restore(paths=["/etc/ssh"]), "spec.paths[0]", "restoring /etc/ssh in place writes into /etc"),
    (["/"], restore(paths=["/"]), "spec.paths[0]", "over the node's root"),
    (["/"], restore(), "spec.paths", "an empty paths restores all that Backup includes"),
    (["/var/lib/data", "/etc/maculaos"], restore(), "spec.paths", "into /etc"),
    (["/"], restore(paths=["/run/x"], targetPath="/var"), "spec.paths[0]", "writes to /var/run/x"),
])
def test_a_restore_that_would_land_on_the_system_is_refused(include: list[str], spec: dict[str, Any], field: str,
                                                            words: str) -> None:
    problems = validate("Restore", "r", spec, restore_cluster(include)).problems
    assert field in [p.field for p in problems], problems
    message = next(p.message for p in problems if p.field == field)
    assert words in message and problems[0].reason == "RestoreRefused"
    # the agent applies the same rule before it touches anything
    assert field in [f for f, _ in restore_refusals(RestoreSpec.model_validate(spec), include)]


@pytest.mark.parametrize(("include", "spec"), [
    (["/var/lib/data"], restore()),
    (["/var/lib/data"], restore(paths=["/var/lib/data/a", "/var/lib/data"])),
    (["/"], restore(paths=["/var/lib/data"])),
    (["/"], restore(targetPath="/var/lib/restored")),
    (["/etc/maculaos"], restore(targetPath="/var/lib/restored")),
    (["/var/lib/data"], restore(targetPath="/var/lib/restored", paths=["/var/lib/data/x"])),
])
def test_a_restore_to_data_directories_is_accepted(include: list[str], spec: dict[str, Any]) -> None:
    assert validate("Restore", "r", spec, restore_cluster(include)).valid


@pytest.mark.parametrize(("path", "system"), [
    ("/", "/"), ("/etc", "/etc"), ("/etc/x", "/etc"), ("/lib", "/lib"), ("/libx32/a", "/libx32"),
    ("/var/run/x", "/var/run"), ("/dev/sda", "/dev"), ("/sys", "/sys"), ("/sbin", "/sbin"),
    ("/var/lib", None), ("/etcetera", None), ("/usrdata", None), ("/srv", None), ("/var", None)])
def test_system_directories(path: str, system: str | None) -> None:
    assert system_directory(path) == system
