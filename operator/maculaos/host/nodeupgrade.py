"""One node's A/B upgrade, step by step, with its state on the data partition so that a restart or a
reboot continues where it stood. Used by the agent (steps granted by the operator) and by
`maculaos upgrade` on the node itself (no Kubernetes; maculaos.cli.node parses its flags).

The order of steps is what keeps a node bootable: the running slot is never written; the new slot is
made the next boot only right before the granted reboot; it gets one try and is marked good only after
the health commit window passed; a bad window marks it bad and boots the old slot, which stays good
throughout. State: <host root>/var/lib/maculaos/upgrade/state.json."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from maculaos.api.nodeupgrade import AgentPhase
from maculaos.host.bundles import BundleError, Release, download, find_local, local_bundles, newest
from maculaos.host.files import atomic_write
from maculaos.host.rauc import BundleInfo, Rauc, RaucError, RaucStatus, activates_installed

log = logging.getLogger("maculaos.upgrade")
STATE_DIR = Path("var/lib/maculaos/upgrade")
BOOT_ID = Path("proc/sys/kernel/random/boot_id")
PROC_STAT = Path("proc/stat")
#: Waits before retrying a reboot command that failed (seconds; the last repeats).
REBOOT_BACKOFF = (5.0, 15.0, 60.0, 300.0)
OS_RELEASE = Path("etc/os-release")

#: progress(phase, percent, message): called while downloading and installing.
StepProgress = Callable[[AgentPhase, int, str], None]


@dataclass(frozen=True)
class UpgradeState:
    """What this node did about its upgrade, kept across restarts and reboots."""

    target_version: str = ""
    phase: AgentPhase = AgentPhase.IDLE
    message: str = ""
    grant_time: str = ""
    """The grant (by its time) the phase answers; a new grant with another time is a new request."""
    grant_uid: str = ""
    """metadata.uid of the NodeUpgrade whose grant the phase answers ("" for `maculaos upgrade`)."""
    grant_action: str = ""
    """Install, Reboot or Rollback: the grant's action."""
    from_slot: str = ""
    """RAUC slot name running when the install started (the way back)."""
    to_slot: str = ""
    """RAUC slot name the target was installed into."""
    from_version: str = ""
    reboot_boot_id: str = ""
    """The boot ID when the reboot was requested; another one means the node rebooted."""
    commit_boot_id: str = ""
    commit_started: float = 0.0
    """Wall time the health commit window opened: the boot of commit_boot_id itself, so an agent that
    starts late does not extend the window."""
    rollback_reason: str = ""
    """Why the pending reboot goes back to the old slot ("" when it goes to the new one)."""
    reboot_why: str = ""
    """What the pending reboot is for (the phase message without the retry notes)."""
    reboot_sent: bool = False
    """The reboot command succeeded: it is never run again for this reboot."""
    reboot_attempts: int = 0
    """Failed runs of the reboot command for this reboot."""
    reboot_retry_at: float = 0.0
    """Wall time of the next try after a failed reboot command."""
    history: list[str] = field(default_factory=list)
    announced: str = ""
    """The outcome the agent last posted an Event about (object uid/version/phase)."""


@dataclass(frozen=True)
class NodeFacts:
    version: str
    slot: str
    """Bootname of the running slot (A or B), "" when RAUC cannot say."""
    boot_id: str


@dataclass(frozen=True)
class HealthVerdict:
    ok: bool
    reason: str


class NodeUpgrader:
    """The upgrade steps of one node over its RAUC and its host root."""

    def __init__(self, host_root: Path, rauc: Rauc, reboot_command: str = "systemctl reboot",
                 clock: Callable[[], float] = time.time) -> None:
        self.host_root = host_root
        self.rauc = rauc
        self.reboot_command = reboot_command
        self.clock = clock
        self.state_dir = host_root / STATE_DIR
        self.state_file = self.state_dir / "state.json"

    # ---- state and facts
    def load(self) -> UpgradeState:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return UpgradeState()
        except ValueError:
            log.warning(f"{self.state_file} is unreadable: starting from Idle")
            return UpgradeState()
        data["phase"] = AgentPhase(data.get("phase", "Idle"))
        known = UpgradeState.__dataclass_fields__
        return UpgradeState(**{k: v for k, v in data.items() if k in known})

    def save(self, state: UpgradeState) -> UpgradeState:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_file, json.dumps(asdict(state), indent=2) + "\n")
        return state

    def _set(self, state: UpgradeState, phase: AgentPhase, message: str, **changes: object) -> UpgradeState:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.clock()))} {phase.value}: {message}"
        log.info(f"upgrade {state.target_version or changes.get('target_version', '')}: {phase.value}: {message}")
        return self.save(replace(state, phase=phase, message=message,
                                 history=[*state.history, line][-20:], **changes))  # type: ignore[arg-type]

    def facts(self, status: RaucStatus | None = None) -> NodeFacts:
        slot = ""
        try:
            slot = (status or self.rauc.status()).booted
        except RaucError as exc:
            log.warning(f"cannot read RAUC status: {exc}")
        return NodeFacts(version=read_os_version(self.host_root), slot=slot, boot_id=read_boot_id(self.host_root))

    # ---- Install: no disruption
    def install(self, release: Release, local_dir: Path | None, grant_time: str = "",
                progress: StepProgress | None = None, grant_uid: str = "") -> UpgradeState:
        """Get, verify and install release into the inactive slot; the running slot stays the next boot."""
        state = UpgradeState(target_version=release.version, grant_time=grant_time, grant_uid=grant_uid,
                             grant_action="Install", history=self.load().history)
        try:
            status = self.rauc.status()
        except RaucError as exc:
            return self._set(state, AgentPhase.FAILED, f"RAUC is not usable on this node: {exc}")
        facts = self.facts(status)
        if facts.version == release.version:
            return self._set(state, AgentPhase.SUCCEEDED, f"already running {release.version} (slot {facts.slot})")
        state = self._set(state, AgentPhase.DOWNLOADING, f"getting {release.version}", from_version=facts.version)
        try:
            bundle, info = self._get_bundle(release, local_dir, progress)
        except (BundleError, RaucError) as exc:
            return self._set(state, AgentPhase.FAILED, f"not installed, slot {facts.slot} untouched: {exc}")
        problem = _mismatch(info.version, info.compatible, release.version, status.compatible)
        if problem:
            if local_dir is None:  # a download that can never be installed: its space goes back to the node
                bundle.unlink(missing_ok=True)
            return self._set(state, AgentPhase.FAILED, f"not installed, slot {facts.slot} untouched: {problem}")
        other = status.other_slot()
        state = self._set(state, AgentPhase.INSTALLING, f"installing {release.version} into slot {other.bootname}",
                          from_slot=status.booted_slot().name, to_slot=other.name)
        try:
            self.rauc.install(bundle, lambda pct, what: progress(AgentPhase.INSTALLING, pct, what)
                              if progress else None)
            self._keep_booted_primary()
        except RaucError as exc:
            self._keep_booted_primary()
            return self._set(state, AgentPhase.FAILED,
                             f"not installed, slot {facts.slot} untouched: rauc install failed: {exc}")
        finally:
            if local_dir is None:  # a download served its purpose; a bundle of the node's own stays
                bundle.unlink(missing_ok=True)
        return self._set(state, AgentPhase.INSTALLED,
                         f"{release.version} installed in slot {other.bootname}; waiting for a reboot")

    def _get_bundle(self, release: Release, local_dir: Path | None,
                    progress: StepProgress | None) -> tuple[Path, BundleInfo]:
        """The bundle and its manifest, read unverified: `rauc install` checks the signature (and again
        the compatible) before it writes a byte, so one verification pass is enough."""
        if local_dir is not None:
            return find_local(local_dir, release.version, self.rauc)

        def report(done: int, total: int | None) -> None:
            if progress is not None and total:
                progress(AgentPhase.DOWNLOADING, done * 100 // total, f"{done} of {total} bytes")
        bundle = download(release, self.state_dir / "bundles", report)
        try:
            return bundle, self.rauc.info(bundle, verify=False)
        except RaucError:
            bundle.unlink(missing_ok=True)  # not a bundle RAUC can read: never installable, so not kept
            raise

    def _keep_booted_primary(self) -> None:
        """RAUC may activate what it installed; the next boot stays the running slot until a reboot is
        granted, so a power cut before then changes nothing."""
        if self.rauc.conf is not None and not activates_installed(self.rauc.conf):
            return  # this RAUC leaves a fresh slot inactive (activate-installed=false): nothing to undo
        status = self.rauc.status()
        if status.primary != status.booted_slot().name:
            self.rauc.mark_active("booted")

    # ---- Reboot: disruption the operator allowed
    def reboot(self, grant_time: str = "", grant_uid: str = "") -> UpgradeState:
        """Make the installed slot the next boot (one try) and reboot."""
        state = self.load()
        if state.phase is not AgentPhase.INSTALLED:
            return state
        try:
            self.rauc.mark_active(state.to_slot)
        except RaucError as exc:
            return self._set(state, AgentPhase.FAILED, f"cannot make slot {state.to_slot} the next boot: {exc}")
        grant = {"grant_time": grant_time or state.grant_time, "grant_uid": grant_uid or state.grant_uid,
                 "grant_action": "Reboot"}
        return self._start_reboot(state, f"rebooting into {state.to_slot} ({state.target_version})",
                                  rollback_reason="", **grant)

    def rollback(self, reason: str, grant_time: str = "", grant_uid: str = "") -> UpgradeState:
        """Boot the other slot (the previous version) again."""
        state = self.load()
        try:
            status = self.rauc.status()
            other = status.other_slot()
            if state.phase is AgentPhase.INSTALLED:  # never booted: nothing to reboot out of
                self.rauc.mark_bad(other.name)
                return self._set(state, AgentPhase.ROLLED_BACK, f"{reason}; slot {other.bootname} marked bad, "
                                 f"still running {status.booted}", grant_time=grant_time or state.grant_time,
                                 grant_uid=grant_uid or state.grant_uid, grant_action="Rollback")
            if other.boot_status != "good":  # empty, or marked bad after a failed window: nothing to go back to
                return self._set(state, state.phase, f"not rolled back: slot {other.bootname} is {other.boot_status} "
                                 f"(no good previous version); still running slot {status.booted}",
                                 grant_time=grant_time or state.grant_time, grant_uid=grant_uid or state.grant_uid,
                                 grant_action="Rollback")
            self.rauc.mark_active(other.name)
        except (RaucError, StopIteration) as exc:
            return self._set(state, AgentPhase.FAILED, f"cannot roll back: {exc}")
        return self._start_reboot(state, f"rolling back to slot {other.bootname}: {reason}",
                                  grant_time=grant_time or state.grant_time, grant_uid=grant_uid or state.grant_uid,
                                  grant_action="Rollback", rollback_reason=reason,
                                  from_slot=status.booted_slot().name, to_slot=other.name)

    def _start_reboot(self, state: UpgradeState, why: str, **changes: object) -> UpgradeState:
        """Record the reboot (phase Rebooting, the boot ID it leaves), then run the reboot command."""
        state = self._set(state, AgentPhase.REBOOTING, why, reboot_boot_id=read_boot_id(self.host_root),
                          reboot_why=why, reboot_sent=False, reboot_attempts=0, reboot_retry_at=0.0, **changes)
        return self._run_reboot(state)

    def retry_reboot(self) -> UpgradeState:
        """Run the reboot command again when it failed before (after its backoff) and the node has not
        rebooted since. A command that succeeded is never run again for the same reboot."""
        state = self.load()
        if state.phase is not AgentPhase.REBOOTING or state.reboot_sent or self.clock() < state.reboot_retry_at:
            return state
        if read_boot_id(self.host_root) != state.reboot_boot_id:
            return state  # it rebooted after all: after_boot takes it from here
        return self._run_reboot(state)

    def reboot_pending(self, state: UpgradeState) -> bool:
        """A failed reboot command waits for its retry."""
        return state.phase is AgentPhase.REBOOTING and not state.reboot_sent and state.reboot_attempts > 0

    def _run_reboot(self, state: UpgradeState) -> UpgradeState:
        detail = run_reboot_command(self.reboot_command)
        if detail:
            attempts = state.reboot_attempts + 1
            delay = REBOOT_BACKOFF[min(attempts, len(REBOOT_BACKOFF)) - 1]
            log.error(f"reboot command {self.reboot_command!r} failed (attempt {attempts}): {detail}")
            return self._set(state, AgentPhase.REBOOTING,
                             f"{state.reboot_why or state.message}; the reboot command `{self.reboot_command}` "
                             f"failed (attempt {attempts}: {detail}); retrying in {delay:.0f}s",
                             reboot_attempts=attempts, reboot_retry_at=self.clock() + delay)
        return self.save(replace(state, reboot_sent=True))

    # ---- after a boot
    def after_boot(self) -> UpgradeState:
        """Turn a pending reboot into its outcome once the boot ID changed: Committing on the new slot,
        RolledBack on the old one."""
        state = self.load()
        if state.phase is not AgentPhase.REBOOTING and state.phase is not AgentPhase.COMMITTING:
            return state
        boot_id = read_boot_id(self.host_root)
        if state.phase is AgentPhase.REBOOTING and boot_id == state.reboot_boot_id:
            return state  # not rebooted yet
        try:
            status = self.rauc.status()
        except RaucError as exc:
            log.warning(f"cannot read RAUC status after boot: {exc}")
            return state
        booted = status.booted_slot()
        if state.rollback_reason:
            if booted.name == state.to_slot:
                self._mark_good_quietly()
                return self._set(state, AgentPhase.ROLLED_BACK,
                                 f"running {read_os_version(self.host_root)} in slot {booted.bootname} again: "
                                 f"{state.rollback_reason}", rollback_reason="")
            return self._set(state, AgentPhase.FAILED, f"rollback to slot {status.slot(state.to_slot).bootname} "
                             f"did not boot it; running slot {booted.bootname}")
        if booted.name != state.to_slot:
            self._mark_good_quietly()
            how = ("the new slot rebooted before it was committed" if state.phase is AgentPhase.COMMITTING
                   else f"slot {status.slot(state.to_slot).bootname} did not boot")
            return self._set(state, AgentPhase.ROLLED_BACK,
                             f"{how}; the bootloader returned to slot {booted.bootname} "
                             f"({read_os_version(self.host_root)})")
        if state.phase is AgentPhase.REBOOTING or state.commit_boot_id != boot_id:
            return self._set(state, AgentPhase.COMMITTING,
                             f"booted {read_os_version(self.host_root)} in slot {booted.bootname}; "
                             "waiting for health", commit_boot_id=boot_id, commit_started=self._boot_time())
        return state

    def _boot_time(self) -> float:
        """When this boot began (the kernel's btime), so the commit window runs from the boot, not from
        the agent's first run; the agent's clock if the kernel cannot say."""
        booted = read_boot_time(self.host_root)
        if booted is None:
            log.warning(f"cannot read the boot time from {self.host_root / PROC_STAT}: the commit window "
                        "counts from now")
            return self.clock()
        return booted

    def commit(self, verdict: HealthVerdict, window_seconds: float, auto_rollback: bool = True) -> UpgradeState:
        """Inside the window (counted from the boot): mark good as soon as the verdict is healthy; after it,
        mark bad and roll back, also when the first look comes too late (an agent that started late)."""
        state = self.load()
        if state.phase is not AgentPhase.COMMITTING:
            return state
        elapsed = self.clock() - state.commit_started
        if verdict.ok and elapsed < window_seconds:
            try:
                self.rauc.mark_good("booted")
            except RaucError as exc:
                return self._set(state, AgentPhase.COMMITTING, f"healthy, but mark-good failed (retrying): {exc}")
            version = read_os_version(self.host_root)
            return self._set(state, AgentPhase.SUCCEEDED, f"running {version} in slot "
                             f"{self.rauc.status().booted}, marked good")
        if elapsed < window_seconds:
            if state.message != f"waiting for health: {verdict.reason}":
                return self._set(state, AgentPhase.COMMITTING, f"waiting for health: {verdict.reason}")
            return state
        reason = (f"health commit window ({window_seconds:.0f}s) failed: {verdict.reason}" if not verdict.ok else
                  f"health commit window ({window_seconds:.0f}s) was over ({elapsed:.0f}s after boot) before "
                  "the node was found healthy")
        if not auto_rollback:
            return self._set(state, AgentPhase.FAILED, f"{reason}; autoRollback is off: slot left unconfirmed "
                             "(the next reboot returns to the previous slot)")
        try:
            self.rauc.mark_bad("booted")
            self.rauc.mark_active(state.from_slot)
        except RaucError as exc:
            log.error(f"mark-bad/mark-active failed ({exc}); the bootloader's one try still falls back")
        return self._start_reboot(state, f"rolling back to {state.from_slot}: {reason}", rollback_reason=reason,
                                  to_slot=state.from_slot, from_slot=state.to_slot)

    def _mark_good_quietly(self) -> None:
        try:
            self.rauc.mark_good("booted")
        except RaucError as exc:
            log.warning(f"cannot mark the booted slot good: {exc}")


def local_upgrader(host_root: Path, rauc_command: str = "rauc", rauc_conf: Path | None = None,
                   reboot_command: str = "systemctl reboot") -> NodeUpgrader:
    """The upgrader of `maculaos upgrade` on the node itself: rauc_conf (default <host root>/etc/rauc/
    system.conf) when it exists, else RAUC's own default."""
    conf = rauc_conf or host_root / "etc/rauc/system.conf"
    return NodeUpgrader(host_root, Rauc(rauc_command, conf if conf.exists() else None, root=host_root), reboot_command)


def local_release(upgrader: NodeUpgrader, source_dir: Path, version: str | None = None) -> Release:
    """The release to install from a directory of bundles: version, or the newest bundle there."""
    version = version or newest(local_bundles(source_dir, upgrader.rauc))
    if not version:
        raise BundleError(f"no readable bundle in {source_dir}")
    return Release(version)


def describe_slots(upgrader: NodeUpgrader) -> tuple[RaucStatus, list[str]]:
    """RAUC's status and a few lines about the slots, versions and the upgrade in progress (after a boot
    is taken into account: after_boot runs)."""
    status = upgrader.rauc.status()
    booted, other = status.booted_slot(), status.other_slot()
    lines = [f"running:   {read_os_version(upgrader.host_root) or '?'} in slot {booted.bootname} ({booted.name})",
             f"other:     slot {other.bootname} ({other.name}): {other.version or 'no RAUC install'}, "
             f"{other.boot_status}{', boots next' if status.primary == other.name else ''}"]
    state = upgrader.after_boot()
    if state.target_version:
        lines.append(f"upgrade:   {state.target_version}: {state.phase.value}: {state.message}")
    return status, lines


def verify_bundle(upgrader: NodeUpgrader, release: Release, source_dir: Path | None,
                  node_compatible: str) -> tuple[Path, str]:
    """The release's bundle (from source_dir, else downloaded), its signature verified by RAUC, and why it
    does not fit this node ("" when it does)."""
    bundle = (find_local(source_dir, release.version, upgrader.rauc)[0] if source_dir is not None
              else download(release, upgrader.state_dir / "bundles"))
    info = upgrader.rauc.info(bundle)
    return bundle, _mismatch(info.version, info.compatible, release.version, node_compatible)


def _mismatch(version: str, compatible: str, want_version: str, want_compatible: str) -> str:
    if compatible != want_compatible:
        return f"bundle is for {compatible!r}, this node is {want_compatible!r} (incompatible)"
    if version != want_version:
        return f"bundle holds version {version}, the target is {want_version}"
    return ""


def read_boot_id(host_root: Path) -> str:
    try:
        return (host_root / BOOT_ID).read_text().strip()
    except OSError:
        return ""


def read_boot_time(host_root: Path) -> float | None:
    """The kernel's boot time (btime of /proc/stat, seconds since the epoch), None when unreadable."""
    try:
        text = (host_root / PROC_STAT).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "btime" and value.strip().isdigit():
            return float(value.strip())
    return None


def read_os_version(host_root: Path) -> str:
    """VERSION_ID of the running system's os-release."""
    try:
        text = (host_root / OS_RELEASE).read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_ID":
            return value.strip().strip('"')
    return ""


def run_reboot_command(command: str) -> str:
    """Run the agent's reboot command; "" when it succeeded, else what went wrong. Shared by upgrades and
    decommissioning, so a node reboots one way."""
    try:
        subprocess.run(shlex.split(command), check=True, timeout=60, capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return (getattr(exc, "stderr", "") or "").strip()[-300:] or str(exc)
    return ""
