"""The operator's own checks, over an in-memory cluster view (the integration tests use the real one)."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from maculaos.controller.validation import Problem, validate, version_key

NODES = {
    "nuc-01": {"macula.io/site": "warehouse", "os.macula.io/version": "0.3.0"},
    "nuc-02": {"macula.io/site": "warehouse", "os.macula.io/version": "0.2.0"},
    "pi-03": {"macula.io/site": "shop", "os.macula.io/version": "0.2.0"},
}


@dataclass
class Cluster:
    nodes: dict[str, dict[str, str]] = field(default_factory=lambda: dict(NODES))
    secrets: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    backups: dict[str, dict[str, Any]] = field(default_factory=dict)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    servers: dict[str, str] = field(default_factory=lambda: {n: f"http://{n}:8000" for n in NODES})

    def node_labels(self) -> Mapping[str, Mapping[str, str]]:
        return self.nodes

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        return self.secrets.get((namespace, name))

    def backup_spec(self, name: str) -> Mapping[str, Any] | None:
        return self.backups.get(name)

    def meshroles(self) -> Mapping[str, Mapping[str, Any]]:
        return self.roles

    def backup_servers(self) -> Mapping[str, str]:
        return self.servers


BACKUP = {"target": {"local": {"path": "/backups"}},
          "repositoryPasswordSecretRef": {"name": "repo", "key": "password"}}


def fields(problems: list[Problem]) -> list[str]:
    return [p.field for p in problems]


def test_valid_objects_have_no_problems_and_list_their_nodes() -> None:
    cluster = Cluster(secrets={("maculaos-system", "repo"): {"password"}})
    verdict = validate("Backup", "b", BACKUP, cluster)
    assert verdict.valid and verdict.matched_nodes == ["nuc-01", "nuc-02", "pi-03"]
    verdict = validate("MeshRole", "m", {"nodeSelector": {"matchLabels": {"macula.io/site": "shop"}}}, cluster)
    assert verdict.valid and verdict.matched_nodes == ["pi-03"]


def test_schema_errors_carry_the_camel_case_field_path() -> None:
    verdict = validate("HealthCheck", "h", {"checks": [{"name": "x", "type": "tcp", "tcp": {"port": 70000}}]},
                       Cluster())
    assert fields(verdict.problems) == ["spec.checks[0].tcp.port"]


def test_selector_matching_no_node() -> None:
    verdict = validate("HealthCheck", "h", {
        "nodeSelector": {"matchLabels": {"macula.io/site": "moon"}},
        "checks": [{"name": "x", "type": "tcp", "tcp": {"port": 22}}]}, Cluster())
    assert fields(verdict.problems) == ["spec.nodeSelector"]
    assert verdict.problems[0].reason == "NoMatchingNodes"
    assert "none of the cluster's 3 nodes" in verdict.problems[0].message


def test_downgrade_needs_allow_downgrade() -> None:
    spec = {"version": "0.2.5"}
    verdict = validate("NodeUpgrade", "u", spec, Cluster())
    assert fields(verdict.problems) == ["spec.version"]
    assert "nuc-01 runs 0.3.0" in verdict.problems[0].message
    assert validate("NodeUpgrade", "u", {**spec, "allowDowngrade": True}, Cluster()).valid
    warehouse_only = {"version": "0.3.0", "nodeSelector": {"matchLabels": {"macula.io/site": "shop"}}}
    assert validate("NodeUpgrade", "u", warehouse_only, Cluster()).valid


def test_unknown_time_zone_in_a_maintenance_window() -> None:
    spec = {"version": "1.0.0", "maintenanceWindows": [
        {"start": "01:00", "end": "05:00", "timeZone": "UTC"},
        {"start": "01:00", "end": "05:00", "timeZone": "Mars/Olympus_Mons"}]}
    assert fields(validate("NodeUpgrade", "u", spec, Cluster()).problems) == ["spec.maintenanceWindows[1].timeZone"]


@pytest.mark.parametrize(("patch", "field_path"), [
    ({"schedule": "61 * * * *"}, "spec.schedule"),
    ({"timeZone": "Europe/Atlantis"}, "spec.timeZone"),
    ({"check": {"schedule": "0 25 * * *"}}, "spec.check.schedule"),
])
def test_backup_schedule_and_zone(patch: dict[str, Any], field_path: str) -> None:
    cluster = Cluster(secrets={("maculaos-system", "repo"): {"password"}})
    assert fields(validate("Backup", "b", {**BACKUP, **patch}, cluster).problems) == [field_path]


def test_missing_secret_and_missing_key() -> None:
    assert fields(validate("Backup", "b", BACKUP, Cluster()).problems) == ["spec.repositoryPasswordSecretRef.name"]
    cluster = Cluster(secrets={("maculaos-system", "repo"): {"pass"}})
    problems = validate("Backup", "b", BACKUP, cluster).problems
    assert fields(problems) == ["spec.repositoryPasswordSecretRef.key"]
    assert "has no key 'password' (it has pass)" in problems[0].message


def test_mesh_replication_needs_enough_peers() -> None:
    cluster = Cluster(secrets={("maculaos-system", "repo"): {"password"}})
    spec = {**BACKUP, "target": {"mesh": {"replicationFactor": 3}}}
    assert fields(validate("Backup", "b", spec, cluster).problems) == ["spec.target.mesh.replicationFactor"]
    spec = {**BACKUP, "target": {"mesh": {"replicationFactor": 2}}}
    assert validate("Backup", "b", spec, cluster).valid
    cluster.servers.pop("pi-03")  # only nodes that serve a rest-server hold copies
    problems = validate("Backup", "b", spec, cluster).problems
    assert fields(problems) == ["spec.target.mesh.replicationFactor"]
    assert "os.macula.io/backup-server" in problems[0].message and "nuc-01" in problems[0].message
    cluster.servers["pi-03"] = "pi-03:8000"  # no scheme: not a URL restic can use
    problems = validate("Backup", "b", spec, cluster).problems
    assert fields(problems)[0] == "Node pi-03 annotation os.macula.io/backup-server"
    assert "'pi-03:8000' is not a rest-server URL" in problems[0].message


@pytest.mark.parametrize("target", ["rest", "mesh"])
def test_target_credentials_secret_is_checked(target: str) -> None:
    ref = {"name": "peers", "key": "basic"}
    where = {"rest": {"url": "http://nas.lan:8000"}, "mesh": {"replicationFactor": 2}}[target]
    spec = {**BACKUP, "target": {target: {**where, "credentialsSecretRef": ref}}}
    cluster = Cluster(secrets={("maculaos-system", "repo"): {"password"}})
    problems = validate("Backup", "b", spec, cluster).problems
    assert fields(problems) == [f"spec.target.{target}.credentialsSecretRef.name"]
    assert problems[0].reason == "SecretNotFound"
    cluster.secrets[("maculaos-system", "peers")] = {"user"}
    assert fields(validate("Backup", "b", spec, cluster).problems) == [f"spec.target.{target}.credentialsSecretRef.key"]
    cluster.secrets[("maculaos-system", "peers")] = {"basic"}
    assert validate("Backup", "b", spec, cluster).valid


def test_meshrole_conflict_names_both_objects() -> None:
    shop = {"matchLabels": {"macula.io/site": "shop"}}
    cluster = Cluster(roles={"a": {"realm": "io.macula"}, "b": {"realm": "com.example", "nodeSelector": shop}})
    verdict = validate("MeshRole", "a", cluster.roles["a"], cluster)
    assert fields(verdict.problems) == ["spec.realm"]
    assert "MeshRole b on nodes pi-03" in verdict.problems[0].message
    assert verdict.problems[0].reason == "Conflict"
    apart = Cluster(roles={"a": {"nodeSelector": {"matchLabels": {"macula.io/site": "warehouse"}}},
                           "b": cluster.roles["b"]})
    assert validate("MeshRole", "a", apart.roles["a"], apart).valid


def test_restore_checks_backup_and_node() -> None:
    cluster = Cluster(backups={"nightly": {**BACKUP, "nodeSelector": {"matchLabels": {"macula.io/site": "shop"}}}})
    spec = {"backupName": "nightly", "nodeName": "pi-03", "snapshot": {"latest": True}}
    assert validate("Restore", "r", spec, cluster).valid
    assert fields(validate("Restore", "r", {**spec, "backupName": "weekly"}, cluster).problems) == ["spec.backupName"]
    assert fields(validate("Restore", "r", {**spec, "nodeName": "ghost"}, cluster).problems) == ["spec.nodeName"]
    problems = validate("Restore", "r", {**spec, "nodeName": "nuc-01"}, cluster).problems
    assert fields(problems) == ["spec.nodeName"] and "not selected by Backup nightly" in problems[0].message
    bad_time = {**spec, "snapshot": {"before": "yesterday"}}
    assert fields(validate("Restore", "r", bad_time, cluster).problems) == ["spec.snapshot.before"]


def test_version_ordering() -> None:
    ordered = ["0.9.0", "1.0.0-rc.1", "1.0.0", "v1.0.1", "1.10.0"]
    assert sorted(ordered, key=version_key) == ordered


@pytest.mark.parametrize(("b", "field_path", "words"), [
    ({"firewall": {"defaultPolicy": "accept"}}, "spec.firewall.defaultPolicy", "accept here, drop there"),
    ({"firewall": {"allowSSH": False}}, "spec.firewall.allowSSH", "false here, true there"),
    ({"firewall": {"extraPorts": [{"port": 8080}]}}, "spec.firewall.extraPorts", "[{"),
    ({"tlsMode": "production", "certificateSecretRef": {"name": "c", "key": "k"}}, "spec.tlsMode",
     "production here, development there"),
])
def test_meshrole_conflicts_name_the_field_and_each_value_not_reprs(b: dict[str, Any], field_path: str,
                                                                    words: str) -> None:
    cluster = Cluster(roles={"a": {}, "b": b}, secrets={("maculaos-system", "c"): {"k"}})
    problems = validate("MeshRole", "b", b, cluster).problems
    assert fields(problems) == [field_path]
    assert words in problems[0].message and "MeshRole a" in problems[0].message
    assert "Firewall(" not in problems[0].message and "<" not in problems[0].message
