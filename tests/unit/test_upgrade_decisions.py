"""The agent's upgrade decisions and the RAUC output parsing, without RAUC or an API server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from maculaos.agent.nodeupgrade import _entry, _in_charge, _wants_install
from maculaos.api.nodeupgrade import AgentPhase, Grant, GrantAction, ReleaseTarget
from maculaos.host.bundles import newest
from maculaos.host.nodeupgrade import NodeFacts, UpgradeState
from maculaos.host.rauc import BundleInfo, Rauc, RaucError, _rauc_message, activates_installed

TARGET = ReleaseTarget(version="0.2.0")
GRANT = Grant(action=GrantAction.INSTALL, time="2026-11-25T10:00:00Z")
UID = "6f1c2a9e-0000-4000-8000-000000000001"
FACTS = NodeFacts(version="0.1.0", slot="A", boot_id="b1")


def test_a_grant_is_acted_on_once_and_an_interrupted_install_resumes() -> None:
    assert _wants_install(None, TARGET, GRANT, UID)
    failed = UpgradeState(target_version="0.2.0", phase=AgentPhase.FAILED, grant_time=GRANT.time, grant_uid=UID)
    assert not _wants_install(failed, TARGET, GRANT, UID), "no retry loop on the same grant"
    assert _wants_install(failed, TARGET, Grant(action=GrantAction.INSTALL, time="2026-11-25T11:00:00Z"), UID)
    assert _wants_install(failed, TARGET, GRANT, "uid-of-a-new-object"), "another object's grant is a new request"
    cut_short = UpgradeState(target_version="0.2.0", phase=AgentPhase.DOWNLOADING, grant_time=GRANT.time,
                             grant_uid=UID)
    assert _wants_install(cut_short, TARGET, GRANT, UID)
    older = UpgradeState(target_version="0.1.5", phase=AgentPhase.SUCCEEDED, grant_time=GRANT.time, grant_uid=UID)
    assert _wants_install(older, TARGET, GRANT, UID)
    rebooting = UpgradeState(target_version="0.1.5", phase=AgentPhase.REBOOTING, grant_time="earlier")
    assert not _wants_install(rebooting, TARGET, GRANT, UID), "no install while a reboot is under way"


def test_entry_reports_the_state_for_this_object_and_target_else_idle_or_already_there() -> None:
    installed = UpgradeState(target_version="0.2.0", phase=AgentPhase.INSTALLED, message="in B",
                             grant_time=GRANT.time, grant_uid=UID, grant_action="Install", from_version="0.1.0")
    assert _entry(installed, FACTS, TARGET, UID) == {
        "phase": "Installed", "message": "in B", "targetVersion": "0.2.0", "fromVersion": "0.1.0",
        "observedGrant": {"uid": UID, "action": "Install", "time": GRANT.time}}
    assert _entry(None, FACTS, TARGET, UID)["phase"] == "Idle"
    assert "not granted yet" in _entry(installed, FACTS, ReleaseTarget(version="0.3.0"), UID)["message"]
    there = NodeFacts(version="0.2.0", slot="B", boot_id="b2")
    assert _entry(None, there, TARGET, UID)["phase"] == "Succeeded"
    assert _entry(None, FACTS, None, UID) == {"phase": "Idle", "message": "no target version resolved yet",
                                              "targetVersion": ""}


def test_an_outcome_for_another_object_is_never_reported_as_this_ones() -> None:
    """The bug of the last landing: a Failed (wrong sha256) kept from a deleted NodeUpgrade for the same
    version was reported to the new object before its grant was acted on."""
    old_failure = UpgradeState(target_version="0.2.0", phase=AgentPhase.FAILED, message="sha256 mismatch",
                               grant_time=GRANT.time, grant_uid="uid-of-the-deleted-object", grant_action="Install")
    entry = _entry(old_failure, FACTS, TARGET, UID)
    assert entry["phase"] == "Idle" and "observedGrant" not in entry and "sha256" not in entry["message"]
    from_the_cli = replace(old_failure, grant_uid="", grant_time="cli")
    assert _entry(from_the_cli, FACTS, TARGET, "")["phase"] == "Idle", "an object without a uid answers nothing"


def test_the_granting_object_is_in_charge_else_the_oldest() -> None:
    def obj(created: str, grants: dict[str, object] | None = None) -> dict[str, object]:
        return {"metadata": {"creationTimestamp": created}, "status": {"grants": grants or {}}}
    objects = {"b": obj("2026-01-01T00:00:00Z"), "a": obj("2026-02-01T00:00:00Z")}
    assert _in_charge(objects, "n1") == "b"
    objects["a"] = obj("2026-02-01T00:00:00Z", {"n1": {"action": "Install", "time": "2026-11-25T10:00:00Z"}})
    assert _in_charge(objects, "n1") == "a"
    assert _in_charge(objects, "n2") == "b"


def test_newest_version_compares_numbers_not_text() -> None:
    infos: dict[Path, BundleInfo | None] = {
        Path("a"): BundleInfo("c", "0.9.0"), Path("b"): BundleInfo("c", "0.10.0"), Path("c"): None}
    assert newest(infos) == "0.10.0"
    assert newest({}) == ""


def test_rauc_messages_lose_timestamps_and_progress() -> None:
    output = ("installing\n  0% Installing\n 20% Checking bundle\n"
              "rauc-Message: 21:41:11.205: LastError: signature verification failed: Verify error\n"
              "Installing `/x.raucb` failed\n")
    assert _rauc_message(output) == "signature verification failed: Verify error; Installing `/x.raucb` failed"


def test_activate_installed_is_read_from_system_conf(tmp_path: Path) -> None:
    conf = tmp_path / "system.conf"
    conf.write_text("[system]\ncompatible=x\nactivate-installed=false\n")
    assert not activates_installed(conf)
    conf.write_text("[system]\ncompatible=x\n")
    assert activates_installed(conf), "RAUC's default activates"


def test_paths_are_handed_to_rauc_as_the_node_sees_them(tmp_path: Path) -> None:
    """The DaemonSet's agent sees the node at /host; the node's RAUC (entered through nsenter) at /."""
    rauc = Rauc("nsenter --target 1 --mount -- rauc", root=Path("/host"))
    assert rauc.node_path(Path("/host/var/lib/maculaos/upgrade/bundles/x.raucb")) == \
        "/var/lib/maculaos/upgrade/bundles/x.raucb"
    assert rauc.node_path(Path("/host/media/usb/../usb/b.raucb")) == "/media/usb/b.raucb"
    assert rauc.node_path(Path("/host")) == "/"
    assert rauc._argv("install", "/b.raucb") == ["nsenter", "--target", "1", "--mount", "--", "rauc", "install",
                                                 "/b.raucb"]
    for outside in (Path("/hostile/b.raucb"), Path("/tmp/b.raucb"), Path("/host/../etc/rauc")):
        with pytest.raises(RaucError, match="outside the node's root /host"):
            rauc.node_path(outside)
    on_the_node = Rauc(root=Path("/"))  # `maculaos upgrade` on the node itself: nothing to translate
    assert on_the_node.node_path(Path("/var/lib/x.raucb")) == "/var/lib/x.raucb"
