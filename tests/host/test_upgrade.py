"""The node's upgrade steps with real RAUC on a simulated node: install into the inactive slot, reboot
into it, commit or roll back; every refusal leaves the running slot untouched and the next boot unchanged."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from maculaos.agent.nodeupgrade import UpgradeEngine
from maculaos.api.nodeupgrade import AgentPhase
from maculaos.devenv.rauc import SimulatedRaucNode
from maculaos.devenv.rauc import build_bundle as build_test_bundle
from maculaos.host.bundles import SPARE_BYTES, Release
from maculaos.host.nodeupgrade import STATE_DIR, HealthVerdict, read_boot_id
from maculaos.image.bundle import build_bundle
from maculaos.image.signing import given_identity
from tests.diskfull import fill, small_tmpfs
from tests.host.rauc_fixtures import COMPATIBLE, Bundles, BundleServer, release_of, upgrader_for

HEALTHY = HealthVerdict(ok=True, reason="")


def assert_untouched(node: SimulatedRaucNode) -> None:
    """Still running A with A as the next boot, and B not bootable: a refusal changed nothing."""
    status = upgrader_for(node).rauc.status()
    assert (status.booted, status.primary) == ("A", "rootfs.0")
    assert node.slot_state("A") == "good" and node.slot_state("B") == "bad"


def install_and_reboot(node: SimulatedRaucNode, release: Release, local: Path | None = None) -> str:
    upgrader = upgrader_for(node)
    assert upgrader.install(release, local).phase is AgentPhase.INSTALLED
    assert upgrader.rauc.status().primary == "rootfs.0", "the new slot is not the next boot before the reboot grant"
    assert upgrader.reboot("t1").phase is AgentPhase.REBOOTING
    return node.reboot()


def test_good_bundle_installs_reboots_and_commits(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                                   bundle_server: BundleServer) -> None:
    progress: list[tuple[str, int]] = []
    upgrader = upgrader_for(rauc_node)
    state = upgrader.install(release_of(bundle_server, bundles.good), None,
                             progress=lambda phase, pct, _: progress.append((phase.value, pct)))
    assert state.phase is AgentPhase.INSTALLED, state.message
    assert ("Downloading", 100) in progress and ("Installing", 100) in progress
    boot_before = read_boot_id(rauc_node.host_root)
    upgrader.reboot("t1")
    assert rauc_node.reboot() == "B"
    assert read_boot_id(rauc_node.host_root) != boot_before
    upgrader = upgrader_for(rauc_node)  # a new boot: a new agent, a new RAUC service
    assert upgrader.after_boot().phase is AgentPhase.COMMITTING
    state = upgrader.commit(HEALTHY, window_seconds=60)
    assert state.phase is AgentPhase.SUCCEEDED, state.message
    facts = upgrader.facts()
    assert (facts.version, facts.slot) == ("0.2.0", "B")
    assert rauc_node.slot_state("B") == "good"
    assert rauc_node.reboot() == "B", "a committed slot keeps booting"


def test_bundle_signed_by_another_ca_is_refused(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                                bundle_server: BundleServer) -> None:
    state = upgrader_for(rauc_node).install(release_of(bundle_server, bundles.impostor), None)
    assert state.phase is AgentPhase.FAILED
    assert "signature" in state.message.lower() and "slot A untouched" in state.message
    assert_untouched(rauc_node)


def test_wrong_sha256_is_refused_and_the_file_deleted(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                                      bundle_server: BundleServer) -> None:
    release = release_of(bundle_server, bundles.good)
    wrong = Release(release.version, release.url, "0" * 64, release.size)
    upgrader = upgrader_for(rauc_node)
    state = upgrader.install(wrong, None)
    assert state.phase is AgentPhase.FAILED and "sha256 mismatch" in state.message
    assert not list((upgrader.state_dir / "bundles").glob("*.raucb*"))
    assert_untouched(rauc_node)


def test_incompatible_bundle_is_refused(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                        bundle_server: BundleServer) -> None:
    upgrader = upgrader_for(rauc_node)
    state = upgrader.install(release_of(bundle_server, bundles.incompatible), None)
    assert state.phase is AgentPhase.FAILED
    assert "maculaos-arm64" in state.message and "incompatible" in state.message
    assert_untouched(rauc_node)
    assert list((upgrader.state_dir / "bundles").iterdir()) == [], "the bundle it can never install is not kept"


def test_missing_bundle_is_a_clear_404(rauc_node: SimulatedRaucNode, bundle_server: BundleServer) -> None:
    state = upgrader_for(rauc_node).install(Release("0.2.0", bundle_server.url("nope.raucb"), "a" * 64, 10), None)
    assert state.phase is AgentPhase.FAILED and "HTTP 404" in state.message
    assert_untouched(rauc_node)


def test_a_download_that_gives_up_leaves_no_partial_file(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                                         bundle_server: BundleServer) -> None:
    """A server that closes every connection half way through what is left: each drop that brought bytes is
    resumed, until three in a row bring none. The install fails naming the drop, and the partial file goes
    with it: no retry may ever come, and it would hold the data partition's space until another version's
    download pruned it."""
    upgrader = upgrader_for(rauc_node)
    bundle_server.ranges.clear()
    state = upgrader.install(release_of(bundle_server, bundles.good, route="drop"), None)
    assert state.phase is AgentPhase.FAILED and "dropped after " in state.message, state.message
    assert "without progress" in state.message and "partial file is deleted" in state.message, state.message
    assert len(bundle_server.ranges) > 3, "drops that brought bytes were resumed, not counted against the budget"
    assert_untouched(rauc_node)
    assert list((upgrader.state_dir / "bundles").iterdir()) == [], "nothing left on the data partition"


def test_a_dropped_download_resumes_in_the_same_install(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                                        bundle_server: BundleServer) -> None:
    """A connection cut once is resumed from where it stopped (HTTP Range), not fetched again."""
    upgrader = upgrader_for(rauc_node)
    bundle_server.ranges.clear()
    state = upgrader.install(release_of(bundle_server, bundles.good, route="flaky"), None)
    assert state.phase is AgentPhase.INSTALLED, state.message
    assert bundle_server.ranges and all(r.startswith("bytes=") and r != "bytes=0-" for r in bundle_server.ranges)


def test_a_partial_file_an_interrupted_agent_left_is_resumed(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                                             bundle_server: BundleServer) -> None:
    """The agent restarted (or the node lost power) mid-download: the next install of that release resumes
    the partial file it finds instead of fetching it again, and leaves nothing behind."""
    upgrader = upgrader_for(rauc_node)
    directory = upgrader.state_dir / "bundles"
    directory.mkdir(parents=True)
    half = bundles.good.read_bytes()[: bundles.good.stat().st_size // 2]
    (directory / "maculaos-0.2.0.raucb.part").write_bytes(half)
    bundle_server.ranges.clear()
    state = upgrader.install(release_of(bundle_server, bundles.good), None)
    assert state.phase is AgentPhase.INSTALLED, state.message
    assert bundle_server.ranges == [f"bytes={len(half)}-"], bundle_server.ranges
    assert list(directory.iterdir()) == []


def test_not_enough_space_is_refused_before_downloading(rauc_node: SimulatedRaucNode) -> None:
    """The release's size (a release index gives it) is held against the data partition before any
    connection: this server's port is closed, and the refusal names the space, not the connection."""
    release = Release("0.2.0", "http://127.0.0.1:9/maculaos-0.2.0.raucb", "a" * 64, 2**40)
    state = upgrader_for(rauc_node).install(release, None)
    assert state.phase is AgentPhase.FAILED, state.message
    assert "not enough space for 0.2.0 in " in state.message and "the bundle needs 1048576.0 MiB and 64.0 MiB stay " \
        "free for the node" in state.message and "spec.source.localPath" in state.message, state.message
    assert_untouched(rauc_node)


def test_a_disk_that_fills_mid_download_fails_cleanly_then_the_retry_installs(
        tmp_path: Path, bundles: Bundles, bundle_server: BundleServer) -> None:
    """The bundles directory on a tmpfs with room for the bundle and the spare at the start; something
    else on the node takes the rest once the download has begun. The install fails naming the cause, the
    partial file is deleted (it would hold the space the node needs), the slots are untouched; once space
    is back the next try installs. (The tmpfs is mounted before RAUC starts: its private mount namespace
    copies the mounts it starts with, as a node's RAUC sees its data partition.)"""
    big = build_test_bundle(bundles.dir / "big-0.2.0.raucb", "0.2.0", COMPATIBLE, bundles.cert,
                            bundles.dir / "keys" / "fleet.key.pem", payload_bytes=1_500_000, random_payload=True)
    release = release_of(bundle_server, big)
    assert release.size and release.size > 4 * 256 * 1024, "several chunks: the disk fills between two of them"
    node = SimulatedRaucNode(tmp_path / "node", "macula-nuc-01", COMPATIBLE, bundles.cert).create()
    with small_tmpfs(node.host_root / STATE_DIR / "bundles", release.size + SPARE_BYTES + 256 * 1024) as directory:
        node.start_rauc()
        try:
            upgrader = upgrader_for(node)
            fillers: list[Path] = []

            def other_writer(phase: AgentPhase, pct: int, _: str) -> None:
                if phase is AgentPhase.DOWNLOADING and not fillers:
                    fillers.append(fill(directory))
            state = upgrader.install(release, None, progress=other_writer)
            assert fillers, "the download began before the disk filled"
            assert state.phase is AgentPhase.FAILED, state.message
            assert "no space left" in state.message and str(directory) in state.message, state.message
            assert "slot A untouched" in state.message and "partial file deleted" in state.message
            assert upgrader.load().phase is AgentPhase.FAILED, "the saved state says so too"
            assert [p.name for p in directory.iterdir()] == [".filler"], "no partial file left holding space"
            assert_untouched(node)

            fillers[0].unlink()  # space is back
            state = upgrader.install(release, None)
            assert state.phase is AgentPhase.INSTALLED, state.message
            assert node.slot_state("A") == "good" and upgrader.rauc.status().primary == "rootfs.0"
        finally:
            node.shutdown()


def test_downloaded_bundles_do_not_pile_up_on_the_data_partition(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                                                  bundle_server: BundleServer) -> None:
    """A bundle is deleted once RAUC has installed it (or refused it), and files of other versions left
    behind (a failed install, an older agent) go before the next download: each upgrade would otherwise
    leave a bundle the size of the root filesystem on the data partition until it fills."""
    upgrader = upgrader_for(rauc_node)
    directory = upgrader.state_dir / "bundles"
    directory.mkdir(parents=True)
    for leftover in ("maculaos-0.1.5.raucb", "maculaos-0.1.9.raucb.part"):
        (directory / leftover).write_bytes(b"x" * 1000)
    state = upgrader.install(release_of(bundle_server, bundles.impostor), None)
    assert state.phase is AgentPhase.FAILED and "signature" in state.message.lower(), state.message
    assert list(directory.iterdir()) == [], "the refused bundle and the leftovers are gone"
    state = upgrader.install(release_of(bundle_server, bundles.good), None)
    assert state.phase is AgentPhase.INSTALLED, state.message
    assert list(directory.iterdir()) == [], "the installed bundle is gone: the slot holds it now"


def test_failed_health_window_rolls_back_to_the_old_slot(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                                         bundle_server: BundleServer) -> None:
    assert install_and_reboot(rauc_node, release_of(bundle_server, bundles.good)) == "B"
    upgrader = upgrader_for(rauc_node)
    upgrader.after_boot()
    waiting = upgrader.commit(HealthVerdict(False, "Node Ready is False"), window_seconds=3600)
    assert waiting.phase is AgentPhase.COMMITTING and "Node Ready is False" in waiting.message
    state = upgrader.commit(HealthVerdict(False, "Node Ready is False"), window_seconds=0)
    assert state.phase is AgentPhase.REBOOTING and "health commit window" in state.message
    assert rauc_node.reboot() == "A"
    state = upgrader_for(rauc_node).after_boot()
    assert state.phase is AgentPhase.ROLLED_BACK
    assert "Node Ready is False" in state.message and "slot A" in state.message
    assert upgrader_for(rauc_node).facts().version == "0.1.0"
    assert rauc_node.slot_state("B") == "bad" and rauc_node.slot_state("A") == "good"


def test_new_slot_that_does_not_boot_falls_back(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                                bundle_server: BundleServer) -> None:
    rauc_node.set_broken("B")
    assert install_and_reboot(rauc_node, release_of(bundle_server, bundles.good)) == "A"
    state = upgrader_for(rauc_node).after_boot()
    assert state.phase is AgentPhase.ROLLED_BACK, state
    # The slot named as GRUB's menu and the rest of the messages name it, not by RAUC's slot name.
    assert state.message == "slot B did not boot; the bootloader returned to slot A (0.1.0)", state.message


def test_a_bad_build_panics_and_falls_back(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                          bundle_server: BundleServer) -> None:
    """The demo's bad build: nothing marks the node, the bundle's own rootfs fails to boot."""
    bad = build_test_bundle(bundles.dir / "panics-0.2.0.raucb", "0.2.0", COMPATIBLE, bundles.cert,
                      bundles.dir / "keys" / "fleet.key.pem", panics=True)
    assert install_and_reboot(rauc_node, release_of(bundle_server, bad)) == "A"
    state = upgrader_for(rauc_node).after_boot()
    assert state.phase is AgentPhase.ROLLED_BACK and "did not boot" in state.message
    assert rauc_node.slot_state("B") == "bad" and upgrader_for(rauc_node).facts().version == "0.1.0"


def test_reboot_during_the_window_falls_back(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                             bundle_server: BundleServer) -> None:
    """Power lost before the commit: the slot's one try is used up, the old slot boots."""
    install_and_reboot(rauc_node, release_of(bundle_server, bundles.good))
    assert upgrader_for(rauc_node).after_boot().phase is AgentPhase.COMMITTING
    assert rauc_node.reboot() == "A"
    state = upgrader_for(rauc_node).after_boot()
    assert state.phase is AgentPhase.ROLLED_BACK and "before it was committed" in state.message


def test_local_directory_source_picks_the_bundle_by_version(rauc_node: SimulatedRaucNode, bundles: Bundles) -> None:
    """The agent sees the node's root at host_root, RAUC sees it at `/` (as in the DaemonSet, /host):
    the bundle's path is handed over translated, and a directory outside the node's root is refused."""
    outside = rauc_node.dir / "usb"
    outside.mkdir()
    (outside / bundles.newer.name).write_bytes(bundles.newer.read_bytes())
    refused = upgrader_for(rauc_node).install(Release("0.3.0"), outside)
    assert refused.phase is AgentPhase.FAILED and "outside the node's root" in refused.message, refused.message
    assert_untouched(rauc_node)

    usb = rauc_node.host_root / "media/usb"
    usb.mkdir(parents=True)
    for bundle in (bundles.good, bundles.newer):
        (usb / bundle.name).write_bytes(bundle.read_bytes())
    assert install_and_reboot(rauc_node, Release("0.3.0"), usb) == "B"
    upgrader = upgrader_for(rauc_node)
    upgrader.after_boot()
    assert upgrader.commit(HEALTHY, 60).phase is AgentPhase.SUCCEEDED
    assert upgrader.facts().version == "0.3.0"

    missing = upgrader.install(Release("0.9.0"), usb)
    assert missing.phase is AgentPhase.FAILED and "no bundle of version 0.9.0" in missing.message
    assert "good-0.2.0.raucb: 0.2.0" in missing.message


def test_operator_rollback_after_success(rauc_node: SimulatedRaucNode, bundles: Bundles,
                                         bundle_server: BundleServer) -> None:
    install_and_reboot(rauc_node, release_of(bundle_server, bundles.good))
    upgrader = upgrader_for(rauc_node)
    upgrader.after_boot()
    upgrader.commit(HEALTHY, 60)
    assert upgrader.rollback("rollback granted by the operator", "t2").phase is AgentPhase.REBOOTING
    assert rauc_node.reboot() == "A"
    state = upgrader_for(rauc_node).after_boot()
    assert state.phase is AgentPhase.ROLLED_BACK and "granted by the operator" in state.message
    assert upgrader_for(rauc_node).facts().version == "0.1.0"


def test_rollback_refused_when_the_other_slot_is_not_good(rauc_node: SimulatedRaucNode) -> None:
    """A fresh node's slot B was never installed: rolling back to it would only cost a boot try."""
    reboots = rauc_node.dir / "rebooted"
    state = upgrader_for(rauc_node, f"touch {reboots}").rollback("asked for on the node")
    assert "not rolled back: slot B is bad" in state.message
    assert not reboots.exists()
    assert_untouched(rauc_node)



def test_a_failed_reboot_command_is_retried_with_backoff_and_never_run_twice(
        rauc_node: SimulatedRaucNode, bundles: Bundles, bundle_server: BundleServer) -> None:
    """The reboot command fails twice (systemd busy, say): the node stays Rebooting with the failure in
    its message, tries again after 5 s and 15 s, and once the command went through it is never run again
    for this reboot, however long the node takes to go down."""
    runs, script = rauc_node.dir / "reboot-runs", rauc_node.dir / "flaky-reboot"
    script.write_text(f'#!/bin/sh\necho x >> {runs}\n[ "$(wc -l < {runs})" -gt 2 ] && exit 0\n'
                      'echo "Failed to start reboot.target: Transaction is destructive." >&2\nexit 1\n')
    script.chmod(0o755)
    now = [1_000_000.0]
    upgrader = upgrader_for(rauc_node, str(script))
    upgrader.clock = lambda: now[0]
    assert upgrader.install(release_of(bundle_server, bundles.good), None).phase is AgentPhase.INSTALLED
    state = upgrader.reboot("t1", "uid-1")
    assert state.phase is AgentPhase.REBOOTING and state.reboot_attempts == 1 and not state.reboot_sent
    assert "failed (attempt 1: Failed to start reboot.target" in state.message and "retrying in 5s" in state.message
    assert upgrader.reboot_pending(state)
    assert upgrader.retry_reboot().reboot_attempts == 1, "not before its backoff"
    now[0] += 5
    state = upgrader.retry_reboot()
    assert state.reboot_attempts == 2 and "retrying in 15s" in state.message
    now[0] += 15
    state = upgrader.retry_reboot()
    assert state.reboot_sent and not upgrader.reboot_pending(state) and state.phase is AgentPhase.REBOOTING
    now[0] += 3600
    upgrader.retry_reboot()
    assert len(runs.read_text().splitlines()) == 3, "the reboot command ran until it went through, then never"
    assert rauc_node.reboot() == "B"
    assert upgrader_for(rauc_node).after_boot().phase is AgentPhase.COMMITTING


def test_the_commit_window_counts_from_the_boot_not_from_the_agents_first_look(
        rauc_node: SimulatedRaucNode, bundles: Bundles, bundle_server: BundleServer) -> None:
    """The window opens at the kernel's boot time (btime of the host's /proc/stat), so an agent that
    starts late cannot give the new slot more time than healthCommitWindow."""
    assert install_and_reboot(rauc_node, release_of(bundle_server, bundles.good)) == "B"
    booted = float((rauc_node.host_root / "proc/stat").read_text().split()[1])
    upgrader = upgrader_for(rauc_node)
    upgrader.clock = lambda: booted + 50  # the agent's first look, 50 s after the boot
    state = upgrader.after_boot()
    assert state.phase is AgentPhase.COMMITTING and state.commit_started == booted
    waiting = upgrader.commit(HealthVerdict(False, "Node Ready is False"), window_seconds=60)
    assert waiting.phase is AgentPhase.COMMITTING, "10 s of the window are left"
    upgrader.clock = lambda: booted + 61
    late = upgrader.commit(HEALTHY, window_seconds=60)
    assert late.phase is AgentPhase.REBOOTING, "healthy, but after the window: not committed"
    assert "was over (61s after boot) before the node was found healthy" in late.message
    assert rauc_node.reboot() == "A"
    assert upgrader_for(rauc_node).after_boot().phase is AgentPhase.ROLLED_BACK


def _image_bundle(bundles: Bundles, tmp_path: Path, version: str) -> tuple[Path, bytes]:
    """A bundle as `maculaos image build` makes it (plain: this kernel has no dm-verity), signed by the
    fleet's key; returns it and its squashfs."""
    tree, squashfs = tmp_path / "tree", tmp_path / "root.squashfs"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text(f"ID=maculaos\nVERSION_ID={version}\n")
    subprocess.run(["mksquashfs", str(tree), str(squashfs), "-quiet", "-no-progress"], check=True)
    kernel, initrd = tmp_path / "kernel", tmp_path / "initrd"
    kernel.write_text(f"kernel {version}\n")
    initrd.write_text(f"initramfs {version}\n")
    identity = given_identity(bundles.cert.with_name("fleet.key.pem"), bundles.cert)
    bundle = build_bundle(squashfs, kernel, initrd, bundles.dir / f"image-{version}.raucb", version, "amd64",
                          "test", identity, fmt="plain")
    return bundle, squashfs.read_bytes()


def test_image_bundle_puts_its_kernel_and_initramfs_in_the_new_slots_esp_folder(
        rauc_node: SimulatedRaucNode, bundles: Bundles, bundle_server: BundleServer, tmp_path: Path) -> None:
    """The image build's own bundle: the inactive slot gets the squashfs, and the bundle's hook puts the
    bundle's kernel and initramfs in that slot's ESP folder, where GRUB reads them (the squashfs has none),
    with the slot's version for GRUB's menu."""
    bundle, squashfs = _image_bundle(bundles, tmp_path, "0.2.0")
    esp = rauc_node.host_root / "boot/efi"
    (esp / "B").mkdir(parents=True)
    (esp / "B" / "vmlinuz").write_text("the kernel of the slot's previous system\n")

    state = upgrader_for(rauc_node).install(release_of(bundle_server, bundle), None)

    assert state.phase is AgentPhase.INSTALLED, state.message
    assert (esp / "B" / "vmlinuz").read_text() == "kernel 0.2.0\n"
    assert (esp / "B" / "initrd.img").read_text() == "initramfs 0.2.0\n"
    assert (esp / "B" / "version.cfg").read_text() == 'set version_B="0.2.0"\n'  # what GRUB's menu names
    assert sorted(p.name for p in (esp / "B").iterdir()) == ["initrd.img", "version.cfg", "vmlinuz"]  # no .new
    assert not (esp / "A").exists()                                       # the running slot's are not touched
    assert (rauc_node.host_root / "rootfs.1").read_bytes()[:len(squashfs)] == squashfs


class _Entries:
    """What the agent would send to its NodeReport (the API server is not part of this test)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def node_entry(self, plural: str, name: str, entry: dict[str, Any] | None, *_: Any, **__: Any) -> bool:
        if entry is not None:
            self.entries.append(entry)
        return True

    def labels(self, *_: Any) -> None:
        pass

    def event(self, *_: Any) -> None:
        pass

    def healthy(self) -> bool:
        return True


def test_the_agent_never_takes_a_bundle_through_a_link_out_of_the_host_root(
        rauc_node: SimulatedRaucNode, bundles: Bundles, tmp_path: Path) -> None:
    """spec.source.localPath /media/usb, with /media on the node a link planted to a directory outside the
    node's root that holds the very bundle asked for: the agent resolves the link inside the host root (as
    the node itself would), finds no such directory there and installs nothing (issue #18). With a real
    /media/usb on the node the same grant installs."""
    outside = tmp_path / "outside"
    (outside / "usb").mkdir(parents=True)
    (outside / "usb" / bundles.newer.name).write_bytes(bundles.newer.read_bytes())
    media = rauc_node.host_root / "media"
    media.symlink_to(outside)
    name = "macula-nuc-01"
    upgrade = {"metadata": {"name": "from-usb", "uid": "u1", "generation": 1,
                            "creationTimestamp": "2026-01-10T00:00:00Z"},
               "spec": {"version": "0.3.0", "source": {"localPath": "/media/usb"}},
               "status": {"target": {"version": "0.3.0"},
                          "grants": {name: {"action": "Install", "time": "2026-01-10T00:01:00Z"}}}}
    node = {"metadata": {"name": name, "labels": {}}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    reports = _Entries()
    engine = UpgradeEngine(name, rauc_node.host_root, rauc_node.rauc(), "true", reports,  # type: ignore[arg-type]
                           lambda: {"from-usb": upgrade}, lambda: {name: node}, lambda: {}, lambda: {})
    engine.converge()
    failed = reports.entries[-1]
    assert failed["phase"] == "Failed", failed
    inside = rauc_node.host_root / str(outside / "usb").lstrip("/")
    assert f"source directory {inside} does not exist on this node" in failed["message"], failed["message"]
    assert_untouched(rauc_node)

    media.unlink()
    (media / "usb").mkdir(parents=True)
    (media / "usb" / bundles.newer.name).write_bytes(bundles.newer.read_bytes())
    upgrade["status"]["grants"][name]["time"] = "2026-01-10T00:02:00Z"  # type: ignore[index]
    engine.converge()
    assert reports.entries[-1]["phase"] == "Installed", reports.entries[-1]


def test_a_field_the_agent_does_not_know_added_mid_commit_still_lets_the_new_slot_commit(
        rauc_node: SimulatedRaucNode, bundles: Bundles, bundle_server: BundleServer) -> None:
    """The node rebooted into its new slot and waits for health when its NodeUpgrade gains a field this agent
    does not know (edited mid-rollout by a newer operator's user): the agent says it leaves the object alone,
    but the slot it booted still gets its verdict, by the defaults, as when the object is deleted; an
    unconfirmed slot would fall back at some later reboot."""
    assert install_and_reboot(rauc_node, release_of(bundle_server, bundles.good)) == "B"
    name = "macula-nuc-01"
    upgrade = {"metadata": {"name": "newer", "uid": "u1", "generation": 2,
                            "creationTimestamp": "2026-01-10T00:00:00Z"},
               "spec": {"version": "0.2.0", "source": {"url": "https://example.com/b.raucb", "sha256": "a" * 64},
                        "judgeBy": {"a": "b"}},
               "status": {"target": {"version": "0.2.0"}}}
    node = {"metadata": {"name": name, "labels": {}}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    reports = _Entries()
    engine = UpgradeEngine(name, rauc_node.host_root, rauc_node.rauc(), "true", reports,  # type: ignore[arg-type]
                           lambda: {"newer": upgrade}, lambda: {name: node}, lambda: {}, lambda: {})
    engine.converge()
    assert reports.entries[-1]["message"].startswith("not acted on: spec.judgeBy: "), reports.entries[-1]
    assert engine.upgrader.load().phase is AgentPhase.SUCCEEDED, engine.upgrader.load().message
    assert rauc_node.slot_state("B") == "good"
