"""A node's mesh roles end to end on a sandbox host: plan (union, conflicts), then apply with real tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from maculaos.agent.meshrole import converge_mesh
from maculaos.api.meshrole import MeshRoleName, MeshRoleSpec
from maculaos.host.config import read_config
from maculaos.host.firstboot import mark_configured, setup_secret
from maculaos.host.meshrole import SERVICE_PROGRAMS, MeshConflict, apply_mesh, plan_mesh, services_not_installed
from maculaos.host.systemd import Systemd, SystemdError

IMAGE_UNITS = Path(__file__).resolve().parents[2] / "image-build/overlay/usr/lib/systemd/system"


def spec(**fields: object) -> MeshRoleSpec:
    return MeshRoleSpec.model_validate(fields)


def test_roles_are_the_union_plus_peer() -> None:
    plan = plan_mesh({"a": spec(roles=["gateway"]), "b": spec(roles=["bootstrap"], nodeLabels={"macula.io/x": "1"})})
    assert plan.roles == {MeshRoleName.GATEWAY, MeshRoleName.BOOTSTRAP}
    assert plan.labels() == {"macula.io/role-peer": "true", "macula.io/role-bootstrap": "true",
                             "macula.io/role-gateway": "true"}, "nodeLabels are the operator's to write"
    assert plan.node_labels == {"macula.io/x": "1"}
    assert plan_mesh({}).labels()["macula.io/role-gateway"] is None


def test_conflicting_realms_name_both_objects() -> None:
    with pytest.raises(MeshConflict, match="MeshRoles a and b .*spec.realm is io.macula in a, com.example in b"):
        plan_mesh({"a": spec(realm="io.macula"), "b": spec(realm="com.example")})


def test_apply_converges_and_returns_to_peer_only(host_root: Path, netns_nft: str) -> None:
    systemd = Systemd(host_root)
    changes = apply_mesh(host_root, plan_mesh({"gw": spec(roles=["gateway"])}), systemd, netns_nft)
    assert changes.firewall and changes.config
    assert set(changes.units) == {"macula-mesh.service", "macula-gateway.service"}
    mesh = read_config(host_root)["maculaos"]["mesh"]
    assert mesh["roles"] == {"bootstrap": False, "gateway": True} and mesh["realm"] == "io.macula"
    table = subprocess.run([netns_nft, "list", "table", "inet", "maculaos"], capture_output=True, text=True).stdout
    assert "gateway" in table

    again = apply_mesh(host_root, plan_mesh({"gw": spec(roles=["gateway"])}), systemd, netns_nft)
    assert not again.firewall and not again.config and again.units == ()

    back = apply_mesh(host_root, plan_mesh({}), systemd, netns_nft)
    assert back.units == ("macula-gateway.service",) and not systemd.is_enabled("macula-gateway.service")
    assert systemd.is_enabled("macula-mesh.service")
    assert read_config(host_root)["maculaos"]["mesh"]["roles"]["gateway"] is False


def test_the_wizards_ports_stay_open_while_it_is_under_way_and_close_once_paired(host_root: Path,
                                                                                  netns_nft: str) -> None:
    """A wizard half-way (its config.yaml written, a reboot since) must stay reachable; a provisioned or
    paired node does not admit its ports."""
    def wizard_rules() -> int:
        table = subprocess.run([netns_nft, "list", "table", "inet", "maculaos"], capture_output=True, text=True,
                               check=True).stdout
        return table.count('comment "first-boot wizard"')

    apply_mesh(host_root, plan_mesh({}), Systemd(host_root), netns_nft)
    assert wizard_rules() == 0                                  # provisioned: config.yaml, no wizard
    setup_secret(host_root)
    apply_mesh(host_root, plan_mesh({}), Systemd(host_root), netns_nft)
    assert wizard_rules() == 1
    mark_configured(host_root)
    apply_mesh(host_root, plan_mesh({}), Systemd(host_root), netns_nft)
    assert wizard_rules() == 0


def test_nothing_changes_when_a_role_service_is_missing(host_root: Path, netns_nft: str) -> None:
    (host_root / "usr/lib/systemd/system/macula-bootstrap.service").unlink()
    before = read_config(host_root)
    with pytest.raises(SystemdError, match="macula-bootstrap.service"):
        apply_mesh(host_root, plan_mesh({"b": spec(roles=["bootstrap"])}), Systemd(host_root), netns_nft)
    assert read_config(host_root) == before
    listed = subprocess.run([netns_nft, "list", "tables"], capture_output=True, text=True).stdout
    assert "maculaos" not in listed


def test_a_role_whose_program_is_absent_is_reported_not_left_to_restart(host_root: Path, netns_nft: str) -> None:
    """The image's role units start only when their program is there; the agent says which roles are
    configured but not installed, in the MeshRole's entry for this node."""
    meshrole = {"metadata": {"name": "b", "generation": 3}, "spec": {"roles": ["bootstrap"]}}
    outcome = converge_mesh({"b": meshrole}, {}, host_root, Systemd(host_root), netns_nft, public_address=True)
    entry = outcome.entries["b"]
    assert entry["phase"] == "Applied" and entry["roles"] == "peer,bootstrap", entry
    assert "bootstrap role configured but its service is not installed (macula-bootstrap.service: " \
           "/usr/bin/macula-bootstrap is missing" in entry["message"], entry
    assert "peer role configured" in entry["message"] and "gateway" not in entry["message"], entry
    assert Systemd(host_root).is_enabled("macula-bootstrap.service")   # enabled: it starts once installed

    programs = host_root / "usr/bin"
    programs.mkdir(parents=True)
    for name in ("macula-mesh", "macula-bootstrap"):
        (programs / name).write_text("#!/bin/sh\n")
    (programs / "macula-mesh").chmod(0o755)
    (programs / "macula-bootstrap").chmod(0o644)                          # there, but not executable
    assert services_not_installed(host_root, plan_mesh({"b": spec(roles=["bootstrap"])})) == [
        "bootstrap role configured but its service is not installed (macula-bootstrap.service: "
        "/usr/bin/macula-bootstrap is missing; the unit is skipped)"]
    (programs / "macula-bootstrap").chmod(0o755)
    outcome = converge_mesh({"b": meshrole}, {}, host_root, Systemd(host_root), netns_nft, public_address=True)
    assert outcome.entries["b"]["message"] == "applied" and outcome.warnings == []


def test_a_network_an_old_schema_let_through_is_invalid_on_the_node(host_root: Path, netns_nft: str) -> None:
    """An object stored before the CRDs checked networks with isCIDR can still hold a bad one: the agent
    reports it Invalid naming the value, and the firewall it loads has none of it."""
    bad = {"metadata": {"name": "bad", "generation": 2},
           "spec": {"firewall": {"extraPorts": [{"port": 9100, "sources": ["10.0.0.0/33"]}]}}}
    outcome = converge_mesh({"bad": bad}, {}, host_root, Systemd(host_root), netns_nft, public_address=True)
    entry = outcome.entries["bad"]
    assert entry["phase"] == "Invalid" and "10.0.0.0/33" in entry["message"], entry
    table = subprocess.run([netns_nft, "list", "table", "inet", "maculaos"], capture_output=True, text=True).stdout
    assert "mdns" in table and "9100" not in table, table


@pytest.mark.parametrize("unit", sorted(SERVICE_PROGRAMS))
def test_the_image_role_units_start_only_with_the_program_the_agent_checks(unit: str) -> None:
    text = (IMAGE_UNITS / unit).read_text()
    program = f"/{SERVICE_PROGRAMS[unit]}"
    assert f"\nConditionFileIsExecutable={program}\n" in text
    assert f"\nExecStart={program} " in text


def test_a_conflict_names_the_field_that_differs_and_each_side_not_reprs() -> None:
    with pytest.raises(MeshConflict) as caught:
        plan_mesh({"a": spec(firewall={"defaultPolicy": "accept", "allowSSH": False}), "b": spec()})
    message = str(caught.value)
    assert "spec.firewall.allowSSH is false in a, true in b" in message
    assert "spec.firewall.defaultPolicy is accept in a, drop in b" in message
    assert "Firewall(" not in message and "<FirewallPolicy" not in message
