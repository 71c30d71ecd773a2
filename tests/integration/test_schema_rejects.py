"""Bad input the API server rejects at the door (schema and CEL rules from the generated CRDs), each with
a message that names the field. Sent with server-side dry run: nothing is stored."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import Cluster

SECRET_REF = {"name": "repo", "key": "password"}
BACKUP = {"target": {"local": {"path": "/backups"}}, "repositoryPasswordSecretRef": SECRET_REF}
CHECK = {"name": "ssh", "type": "tcp", "tcp": {"port": 22}}
S3 = {"endpoint": "minio.lan:9000", "bucket": "fleet", "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
      "secretAccessKeySecretRef": {"name": "s3", "key": "secret"}}


def obj(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "os.macula.io/v1alpha1", "kind": kind, "metadata": {"name": "bad"}, "spec": spec}


def source(network: str) -> dict[str, Any]:
    """A MeshRole opening a port to one source network."""
    return obj("MeshRole", {"firewall": {"extraPorts": [{"port": 80, "sources": [network]}]}})


def tcp_host(host: str) -> dict[str, Any]:
    """A HealthCheck connecting to host."""
    return obj("HealthCheck", {"checks": [{**CHECK, "tcp": {"host": host, "port": 22}}]})


# (id, object, text the error must contain: the field path, and what is wrong)
BAD = [
    ("meshrole-unknown-role", obj("MeshRole", {"roles": ["router"]}),
     ["spec.roles[0]", "Unsupported value: \"router\""]),
    ("meshrole-realm-pattern", obj("MeshRole", {"realm": "Not A Realm"}), ["spec.realm", "should match"]),
    ("meshrole-production-needs-cert", obj("MeshRole", {"roles": ["gateway"], "tlsMode": "production"}),
     ["spec.certificateSecretRef", "certificateSecretRef is required"]),
    ("meshrole-bootstrap-production-needs-hostname",
     obj("MeshRole", {"roles": ["bootstrap"], "tlsMode": "production",
                      "certificateSecretRef": {"name": "tls", "key": "tls.crt"}}),
     ["spec.publicHostname", "publicHostname is required"]),
    ("meshrole-peer-url-scheme", obj("MeshRole", {"bootstrapPeers": ["http://boot.example:80"]}),
     ["spec.bootstrapPeers[0]", "should match"]),
    ("meshrole-no-bootstrap-peers", obj("MeshRole", {"bootstrapPeers": []}),
     ["spec.bootstrapPeers", "bootstrapPeers must name at least one peer"]),
    ("meshrole-role-label", obj("MeshRole", {"nodeLabels": {"macula.io/role-gateway": "true"}}),
     ["spec.nodeLabels", "set from roles"]),
    ("meshrole-version-label", obj("MeshRole", {"nodeLabels": {"os.macula.io/version": "9.9.9"}}),
     ["spec.nodeLabels", "set by each node's agent"]),
    # addresses checked with CEL isCIDR/isIP (Kubernetes >= 1.31), not only a pattern (issue #18)
    ("meshrole-source-octet", source("999.1.1.1/8"),
     ["spec.firewall.extraPorts[0].sources[0]", "CIDR form without host bits"]),
    ("meshrole-source-host-bits", source("10.0.0.1/8"),
     ["spec.firewall.extraPorts[0].sources[0]", "CIDR form without host bits"]),
    ("meshrole-source-leading-zero", source("010.0.0.0/8"),
     ["spec.firewall.extraPorts[0].sources[0]", "CIDR form without host bits"]),
    ("meshrole-source-prefix", source("10.0.0.0/33"),
     ["spec.firewall.extraPorts[0].sources[0]", "CIDR form without host bits"]),
    ("meshrole-source-ipv6-groups", source("1:2:3:4:5:6:7:8:9/64"),
     ["spec.firewall.extraPorts[0].sources[0]", "CIDR form without host bits"]),
    ("healthcheck-tcp-host-octet", tcp_host("999.1.1.1"),
     ["spec.checks[0].tcp.host", "must be an IP address"]),
    ("healthcheck-tcp-host-short-ipv4", tcp_host("10.1.2"),
     ["spec.checks[0].tcp.host", "must be an IP address"]),
    ("healthcheck-tcp-host-two-gaps", tcp_host("1::2::3"),
     ["spec.checks[0].tcp.host", "must be an IP address"]),
    ("healthcheck-tcp-host-dash", tcp_host("-db.lan"),
     ["spec.checks[0].tcp.host", "must be an IP address"]),
    ("backup-s3-endpoint-octet", obj("Backup", {**BACKUP, "target": {"s3": {**S3, "endpoint": "300.1.1.1:9000"}}}),
     ["spec.target.s3.endpoint", "must be a DNS name or an IPv4 address"]),
    ("backup-s3-endpoint-short-ipv4", obj("Backup", {**BACKUP, "target": {"s3": {**S3, "endpoint": "10.1.2"}}}),
     ["spec.target.s3.endpoint", "must be a DNS name or an IPv4 address"]),
    ("meshrole-port-range", obj("MeshRole", {"firewall": {"extraPorts": [{"port": 70000}]}}),
     ["spec.firewall.extraPorts[0].port", "less than or equal to 65535"]),
    ("meshrole-unknown-field", obj("MeshRole", {"rolez": ["gateway"]}), ["unknown field \"spec.rolez\""]),
    ("selector-in-without-values",
     obj("MeshRole", {"nodeSelector": {"matchExpressions": [{"key": "macula.io/site", "operator": "In"}]}}),
     ["spec.nodeSelector.matchExpressions[0].values", "must be non-empty for In"]),
    ("selector-bad-label-key", obj("MeshRole", {"nodeSelector": {"matchLabels": {"bad key!": "x"}}}),
     ["spec.nodeSelector.matchLabels", "valid label key"]),
    ("upgrade-no-target", obj("NodeUpgrade", {}), ["spec", "set version, channel, or both"]),
    ("upgrade-version-pattern", obj("NodeUpgrade", {"version": "latest"}), ["spec.version", "should match"]),
    ("upgrade-max-unavailable", obj("NodeUpgrade", {"version": "1.0.0", "strategy": {"maxUnavailable": "150%"}}),
     ["spec.strategy.maxUnavailable", "percentage such as 25%"]),
    ("upgrade-canary-on-rolling",
     obj("NodeUpgrade", {"version": "1.0.0", "strategy": {"type": "rolling", "canary": {"percentage": "5%"}}}),
     ["spec.strategy.canary", "only allowed with type canary"]),
    ("upgrade-two-sources",
     obj("NodeUpgrade", {"version": "1.0.0", "source": {"url": "https://u.example/b.raucb", "localPath": "/mnt"}}),
     ["spec.source", "exactly one of releaseIndex, url or localPath"]),
    ("upgrade-url-without-sha", obj("NodeUpgrade", {"version": "1.0.0", "source": {"url": "https://u.example/b"}}),
     ["spec.source.sha256", "sha256 is required with url"]),
    ("upgrade-local-without-version", obj("NodeUpgrade", {"channel": "stable", "source": {"localPath": "/mnt"}}),
     ["spec.version", "version is required with source.url and source.localPath"]),
    ("upgrade-wait-beyond-window",
     obj("NodeUpgrade", {"version": "1.0.0", "healthCheckWait": "20m", "healthCommitWindow": "10m"}),
     ["spec.healthCheckWait", "must not exceed healthCommitWindow"]),
    ("upgrade-window-time", obj("NodeUpgrade", {"version": "1.0.0",
                                               "maintenanceWindows": [{"start": "25:00", "end": "05:00"}]}),
     ["spec.maintenanceWindows[0].start", "should match"]),
    ("upgrade-duration-words", obj("NodeUpgrade", {"version": "1.0.0", "healthCommitWindow": "10 minutes"}),
     ["spec.healthCommitWindow", "should match"]),
    ("upgrade-max-unavailable-zero", obj("NodeUpgrade", {"version": "1.0.0", "strategy": {"maxUnavailable": 0}}),
     ["spec.strategy.maxUnavailable", "paused: true holds a rollout"]),
    ("upgrade-delay-words", obj("NodeUpgrade", {"version": "1.0.0", "strategy": {"delayBetweenNodes": "a bit"}}),
     ["spec.strategy.delayBetweenNodes", "should match"]),
    ("upgrade-canary-percentage", obj("NodeUpgrade", {"version": "1.0.0", "strategy": {
        "type": "canary", "canary": {"percentage": "150%"}}}), ["spec.strategy.canary.percentage", "should match"]),
    ("upgrade-canary-threshold", obj("NodeUpgrade", {"version": "1.0.0", "strategy": {
        "type": "canary", "canary": {"successThreshold": "most"}}}),
     ["spec.strategy.canary.successThreshold", "should match"]),
    ("upgrade-window-day", obj("NodeUpgrade", {"version": "1.0.0", "maintenanceWindows": [
        {"days": ["Funday"], "start": "01:00", "end": "05:00"}]}),
     ["spec.maintenanceWindows[0].days[0]", "Unsupported value: \"Funday\""]),
    ("upgrade-window-zone-chars", obj("NodeUpgrade", {"version": "1.0.0", "maintenanceWindows": [
        {"start": "01:00", "end": "05:00", "timeZone": "Europe Brussels"}]}),
     ["spec.maintenanceWindows[0].timeZone", "should match"]),
    ("upgrade-window-empty", obj("NodeUpgrade", {"version": "1.0.0", "maintenanceWindows": [
        {"start": "01:00", "end": "01:00"}]}), ["spec.maintenanceWindows[0].end", "start and end must differ"]),
    ("upgrade-failed-nodes-negative", obj("NodeUpgrade", {"version": "1.0.0", "failurePolicy": {"maxFailedNodes": -1}}),
     ["spec.failurePolicy.maxFailedNodes", "greater than or equal to 0"]),
    ("upgrade-failure-action", obj("NodeUpgrade", {"version": "1.0.0", "failurePolicy": {"action": "Explode"}}),
     ["spec.failurePolicy.action", "Unsupported value: \"Explode\""]),
    ("upgrade-drain-timeout", obj("NodeUpgrade", {"version": "1.0.0", "drain": {"timeout": "forever"}}),
     ["spec.drain.timeout", "should match"]),
    ("upgrade-drain-grace", obj("NodeUpgrade", {"version": "1.0.0", "drain": {"gracePeriodSeconds": -1}}),
     ["spec.drain.gracePeriodSeconds", "greater than or equal to 0"]),
    ("upgrade-index-scheme", obj("NodeUpgrade", {"version": "1.0.0", "source": {"releaseIndex": "ftp://r/i.yaml"}}),
     ["spec.source.releaseIndex", "should match"]),
    ("upgrade-sha-case", obj("NodeUpgrade", {"version": "1.0.0", "source": {"url": "https://u.example/b",
                                                                           "sha256": "A" * 64}}),
     ["spec.source.sha256", "should match"]),
    ("upgrade-channel", obj("NodeUpgrade", {"channel": "edge"}), ["spec.channel", "Unsupported value: \"edge\""]),
    ("upgrade-check-interval", obj("NodeUpgrade", {"channel": "stable", "checkInterval": "daily"}),
     ["spec.checkInterval", "should match"]),
    ("upgrade-judges-label-key", obj("NodeUpgrade", {"version": "1.0.0",
                                                      "healthCheckSelector": {"matchLabels": {"bad key!": "x"}}}),
     ["spec.healthCheckSelector.matchLabels", "valid label key"]),
    ("upgrade-judges-label-value", obj("NodeUpgrade", {"version": "1.0.0",
                                                        "healthCheckSelector": {"matchLabels": {"gate": "no way"}}}),
     ["spec.healthCheckSelector.matchLabels.gate", "should match"]),
    ("upgrade-judges-operator", obj("NodeUpgrade", {"version": "1.0.0", "healthCheckSelector": {
        "matchExpressions": [{"key": "gate", "operator": "Near"}]}}),
     ["spec.healthCheckSelector.matchExpressions[0].operator", "Unsupported value: \"Near\""]),
    ("upgrade-unknown-field", obj("NodeUpgrade", {"version": "1.0.0", "maxSurge": 1}),
     ["unknown field \"spec.maxSurge\""]),
    ("backup-two-targets", obj("Backup", {**BACKUP, "target": {"local": {"path": "/b"}, "mesh": {}}}),
     ["spec.target", "exactly one of local, rest, mesh or s3"]),
    ("backup-keeps-nothing", obj("Backup", {**BACKUP, "retention": {"keepLast": 0}}),
     ["spec.retention", "retention must keep something"]),
    ("backup-relative-include", obj("Backup", {**BACKUP, "include": ["var/lib/data"]}),
     ["spec.include[0]", "should match"]),
    # host paths in canonical form only (issue #18): no "..", "//", "/./", trailing "/" or relative paths
    ("backup-include-climbs", obj("Backup", {**BACKUP, "include": ["/var/lib/../../etc"]}),
     ["spec.include[0]", "should match"]),
    ("backup-include-double-slash", obj("Backup", {**BACKUP, "include": ["/var//lib"]}),
     ["spec.include[0]", "should match"]),
    ("backup-exclude-climbs", obj("Backup", {**BACKUP, "exclude": ["cache/../../etc"]}),
     ["spec.exclude[0]", "should match"]),
    ("backup-local-path-dot", obj("Backup", {**BACKUP, "target": {"local": {"path": "/backups/."}}}),
     ["spec.target.local.path", "should match"]),
    ("upgrade-local-path-climbs", obj("NodeUpgrade", {"version": "1.0.0", "source": {"localPath": "/mnt/../etc"}}),
     ["spec.source.localPath", "should match"]),
    ("healthcheck-pidfile-climbs", obj("HealthCheck", {"checks": [{"name": "p", "type": "process",
                                                                  "process": {"pidFile": "/run/../etc/shadow"}}]}),
     ["spec.checks[0].process.pidFile", "should match"]),
    ("healthcheck-disk-path-trailing-slash", obj("HealthCheck", {"checks": [{"name": "d", "type": "disk",
                                                                           "disk": {"path": "/var/lib/"}}]}),
     ["spec.checks[0].disk.path", "should match"]),
    ("backup-no-password", obj("Backup", {"target": {"local": {"path": "/b"}}}),
     ["spec.repositoryPasswordSecretRef", "Required value"]),
    ("backup-schedule-words", obj("Backup", {**BACKUP, "schedule": "every night"}), ["spec.schedule", "should match"]),
    ("backup-replication-range", obj("Backup", {**BACKUP, "target": {"mesh": {"replicationFactor": 9}}}),
     ["spec.target.mesh.replicationFactor", "less than or equal to 5"]),
    ("backup-rest-credentials-name", obj("Backup", {**BACKUP, "target": {"rest": {
        "url": "http://nas.lan:8000", "credentialsSecretRef": {"name": "Peers!", "key": "basic"}}}}),
     ["spec.target.rest.credentialsSecretRef.name", "should match"]),
    ("backup-mesh-credentials-name", obj("Backup", {**BACKUP, "target": {"mesh": {
        "credentialsSecretRef": {"name": "Peers!", "key": "basic"}}}}),
     ["spec.target.mesh.credentialsSecretRef.name", "should match"]),
    ("backup-mesh-credentials-no-key", obj("Backup", {**BACKUP, "target": {"mesh": {
        "credentialsSecretRef": {"name": "peers"}}}}),
     ["spec.target.mesh.credentialsSecretRef.key", "Required value"]),
    ("backup-mesh-credentials-inline", obj("Backup", {**BACKUP, "target": {"mesh": {
        "credentials": "mesh:peer-secret"}}}),
     ["unknown field \"spec.target.mesh.credentials\""]),
    ("backup-run-timeout-short", obj("Backup", {**BACKUP, "runTimeout": "30s"}),
     ["spec.runTimeout", "runTimeout must be at least 1m"]),
    ("backup-run-timeout-words", obj("Backup", {**BACKUP, "runTimeout": "six hours"}),
     ["spec.runTimeout", "should match"]),
    ("healthcheck-probe-mismatch", obj("HealthCheck", {"checks": [{"name": "web", "type": "http",
                                                                  "tcp": {"port": 80}}]}),
     ["spec.checks[0].type", "probe set must match type"]),
    ("healthcheck-duplicate-names", obj("HealthCheck", {"checks": [CHECK, CHECK]}),
     ["spec.checks[1]", "Duplicate value"]),
    ("healthcheck-timeout-not-below-interval",
     obj("HealthCheck", {"checks": [{**CHECK, "interval": "5s", "timeout": "5s"}]}),
     ["spec.checks[0].timeout", "timeout must be shorter than interval"]),
    ("healthcheck-cleanup-on-process",
     obj("HealthCheck", {"checks": [{"name": "k3s", "type": "process", "process": {"name": "k3s-server"},
                                     "action": "cleanup"}]}),
     ["spec.checks[0].action", "cleanup only applies to disk checks"]),
    ("healthcheck-restart-without-unit",
     obj("HealthCheck", {"checks": [{**CHECK, "restartOnFailure": True}]}),
     ["spec.checks[0].restartUnit", "restartOnFailure needs restartUnit"]),
    ("healthcheck-unknown-type", obj("HealthCheck", {"checks": [{"name": "p", "type": "ping", "tcp": {"port": 1}}]}),
     ["spec.checks[0].type", "Unsupported value: \"ping\""]),
    ("healthcheck-negative-interval", obj("HealthCheck", {"checks": [{**CHECK, "interval": "-5s"}]}),
     ["spec.checks[0].interval", "should match"]),
    ("healthcheck-no-checks", obj("HealthCheck", {"checks": []}), ["spec.checks", "should have at least 1 items"]),
    ("healthcheck-process-name-too-long",
     obj("HealthCheck",
         {"checks": [{"name": "p", "type": "process", "process": {"name": "a-very-long-process-name"}}]}),
     ["spec.checks[0].process.name", "may not be more than 15"]),
    ("healthcheck-disk-threshold", obj("HealthCheck", {"checks": [{"name": "d", "type": "disk",
                                                                  "disk": {"threshold": "120%"}}]}),
     ["spec.checks[0].disk.threshold", "should match"]),
    ("restore-node-and-all", obj("Restore", {"backupName": "nightly", "nodeName": "n1", "allNodes": True,
                                             "snapshot": {"latest": True}}),
     ["spec.nodeName", "set nodeName, or allNodes: true"]),
    ("restore-two-snapshots", obj("Restore", {"backupName": "nightly", "nodeName": "n1",
                                              "snapshot": {"latest": True, "id": "abcdef12"}}),
     ["spec.snapshot", "exactly one of id, latest: true or before"]),
    ("restore-path-climbs", obj("Restore", {"backupName": "nightly", "nodeName": "n1", "snapshot": {"latest": True},
                                            "paths": ["/var/lib/data/../../../etc"]}),
     ["spec.paths[0]", "should match"]),
    ("restore-target-relative", obj("Restore", {"backupName": "nightly", "nodeName": "n1",
                                                "snapshot": {"latest": True}, "targetPath": "restored/./x"}),
     ["spec.targetPath", "should match"]),
]


@pytest.mark.parametrize(("bad", "expected"), [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_api_server_rejects_with_the_field_named(cluster: Cluster, bad: dict[str, Any], expected: list[str]) -> None:
    import yaml

    result = cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(bad), check=False)
    assert result.returncode != 0, f"accepted: {bad}"
    for text in expected:
        assert text in result.stderr, f"{text!r} not in: {result.stderr}"


#: Addresses the CEL rules must let through: both families, names, ports.
GOOD_ADDRESSES = [
    obj("MeshRole", {"firewall": {"extraPorts": [{"port": 80, "sources": ["10.0.0.0/8", "192.168.1.5/32", "fd00::/64",
                                                                        "::/0"]}]}}),
    obj("HealthCheck", {"checks": [{**CHECK, "name": f"c{i}", "tcp": {"host": host, "port": 22}}
                                   for i, host in enumerate(["127.0.0.1", "::1", "fe80::1", "db.lan", "DB.Lan"])]}),
    obj("Backup", {**BACKUP, "target": {"s3": {**S3, "endpoint": "192.168.1.5:9000"}}}),
    obj("Backup", {**BACKUP, "target": {"s3": {**S3, "endpoint": "s3.amazonaws.com"}}}),
]


@pytest.mark.parametrize("good", GOOD_ADDRESSES, ids=["sources", "tcp-hosts", "s3-ip-endpoint", "s3-name-endpoint"])
def test_api_server_accepts_good_addresses(cluster: Cluster, good: dict[str, Any]) -> None:
    import yaml

    result = cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(good), check=False)
    assert result.returncode == 0, result.stderr


def test_at_least_fifteen_distinct_bad_objects() -> None:
    assert len({b[0] for b in BAD}) >= 15
    assert {b[1]["kind"] for b in BAD} == {"MeshRole", "NodeUpgrade", "Backup", "HealthCheck", "Restore"}


def test_a_restore_cannot_be_changed(cluster: Cluster, created: Any) -> None:
    restore = created(obj("Restore", {"backupName": "nightly", "nodeName": "macula-nuc-01",
                                      "snapshot": {"latest": True}}) | {"metadata": {"name": "immutable"}})
    result = cluster.kubectl("patch", "restore", restore["metadata"]["name"], "--type=merge",
                             "-p", '{"spec":{"backupName":"weekly"}}', check=False)
    assert result.returncode != 0 and "cannot be changed once created" in result.stderr


def test_good_examples_pass_the_server_schema(cluster: Cluster) -> None:
    from tests.integration.conftest import REPO

    for path in sorted((REPO / "examples").glob("*.yaml")):
        cluster.kubectl("create", "--dry-run=server", "-f", str(path))
    sites = sorted((REPO / "examples" / "fleet" / "sites").iterdir())
    assert sites, "examples/fleet has no sites"
    for site in sites:  # each site's folder as its Flux builds it
        built = cluster.kubectl("kustomize", str(site)).stdout
        cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=built)


ENTRY = {"uid": "3f1c", "report": {"phase": "Applied"}}


@pytest.mark.parametrize(("entries", "expected"), [
    ({"meshrole/x": ENTRY}, ["status.entries", "every key must be Kind/name"]),
    ({"MeshRole/Bad_Name": ENTRY}, ["status.entries", "every key must be Kind/name"]),
    ({"MeshRole/a/b/c": ENTRY}, ["status.entries", "every key must be Kind/name"]),
    ({"MeshRole/x": {"report": {"phase": "Applied"}}}, ["status.entries.MeshRole/x.uid", "Required value"]),
    ({"MeshRole/x": {"uid": "3f1c"}}, ["status.entries.MeshRole/x.report", "Required value"]),
], ids=["lowercase-kind", "bad-name", "too-many-parts", "no-uid", "no-report"])
def test_a_node_report_with_a_bad_entry_is_rejected(cluster: Cluster, created: Any, entries: dict[str, Any],
                                                     expected: list[str]) -> None:
    """The agent's writes are checked at the door too: an entry the operator could not fold never lands."""
    import json

    report = created({"apiVersion": "os.macula.io/v1alpha1", "kind": "NodeReport",
                      "metadata": {"name": "schema-probe"}})
    result = cluster.kubectl("patch", "nodereport", report["metadata"]["name"], "--subresource=status",
                             "--type=merge", "--dry-run=server", "-p", json.dumps({"status": {"entries": entries}}),
                             check=False)
    assert result.returncode != 0, f"accepted: {entries}"
    for text in expected:
        assert text in result.stderr, f"{text!r} not in: {result.stderr}"
    good = cluster.kubectl("patch", "nodereport", report["metadata"]["name"], "--subresource=status",
                           "--type=merge", "--dry-run=server", "-p",
                           json.dumps({"status": {"entries": {"MeshRole/x": ENTRY}}}), check=False)
    assert good.returncode == 0, good.stderr
