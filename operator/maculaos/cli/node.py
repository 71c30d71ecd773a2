"""Commands for a node, run on the node itself or by its agent: `maculaos agent apply|run`, `node-info`,
`upgrade`, `backup` and `install` (from the live medium). The boot runs `agent apply --once`: its imports
stay inside the command, so that a start imports nothing of Kubernetes."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from maculaos.agent.settings import AgentSettings
from maculaos.cli import options
from maculaos.errors import MaculaosError

if TYPE_CHECKING:
    from maculaos.api.nodeupgrade import AgentPhase
    from maculaos.host.bundles import Release
    from maculaos.host.nodeconfig import NodeConfig
    from maculaos.host.nodeupgrade import NodeUpgrader, UpgradeState
    from maculaos.host.systemd import Systemd
    from maculaos.image.install import Medium

#: The agent's flags that `agent apply` shares with `agent run` (the same fields of AgentSettings).
APPLY_SETTINGS = ("host_root", "nft", "systemctl", "live_systemd")
RUN_SETTINGS = ("node_name", "host_root", "resync_seconds", "nft", "systemctl", "live_systemd", "restic", "rauc",
                "rauc_conf", "reboot_command", "grub_editenv", "grub_editenv_in_node", "lan_neighbours_seconds")
#: The longest wait between two looks for LAN neighbours (a day).
MAX_LAN_NEIGHBOURS_SECONDS = 86400


def _agent_apply(args: argparse.Namespace) -> int:
    """Converge the host from its own config.yaml, without Kubernetes: the boot path of a node."""
    from maculaos.host.backup_server import backup_server_warnings
    from maculaos.host.config import config_file
    from maculaos.host.gitserver import git_server_warnings
    from maculaos.host.kubernetes import apply_join
    from maculaos.host.localisation import apply_localisation
    from maculaos.host.meshrole import apply_mesh, meshrole_security_problem, plan_from_config, services_not_installed
    from maculaos.host.nodeconfig import read_node_config
    from maculaos.host.systemd import Systemd

    if not config_file(args.host_root).exists():
        return _apply_default_firewall(args)
    systemd = Systemd(args.host_root, live=args.live_systemd, systemctl=args.systemctl)
    config = read_node_config(args.host_root)
    _apply_watchdog(args.host_root, config, systemd)  # first: it guards the rest of the boot
    plan = plan_from_config(config)  # the firewall the MeshRoles last gave (recorded by the agent), else config's
    problem = meshrole_security_problem(config)
    if problem:
        print(f"maculaos agent apply: warning: {problem}", file=sys.stderr)
    changes = apply_mesh(args.host_root, plan, systemd, args.nft)
    roles = ",".join(["peer", *sorted(r.value for r in plan.roles)])
    print(f"mesh roles {roles}: config {'updated' if changes.config else 'unchanged'}, "
          f"units changed: {', '.join(changes.units) or 'none'}, "
          f"firewall {'reloaded' if changes.firewall else 'unchanged'}")
    for warning in (services_not_installed(args.host_root, plan) + backup_server_warnings(args.host_root)
                    + git_server_warnings(args.host_root)):
        print(f"maculaos agent apply: warning: {warning}")
    written = apply_localisation(args.host_root, config.maculaos)
    for section in ("maculaos.timezone", "maculaos.keymap", "maculaos.locale", "maculaos.network"):
        if problem := config.problem(section):
            print(f"maculaos agent apply: warning: {problem}", file=sys.stderr)
    print(f"time zone, keyboard, locale, network: files changed: {', '.join(f'/{p}' for p in written) or 'none'}")
    join = apply_join(args.host_root, config)
    print(f"maculaos agent apply: {'warning: ' if join.problem else ''}{join.summary()}")
    return 0


def _apply_watchdog(host_root: Path, config: NodeConfig, systemd: Systemd) -> None:
    """maculaos.watchdog; a bad section is said and changes nothing, and the rest of the apply goes on."""
    from maculaos.host.watchdog import WatchdogError, apply_watchdog

    try:
        print(f"maculaos agent apply: {apply_watchdog(host_root, config, systemd).summary}")
    except WatchdogError as exc:
        print(f"maculaos agent apply: warning: {exc}", file=sys.stderr)


def _apply_default_firewall(args: argparse.Namespace) -> int:
    """A node without config.yaml (first boot, the live medium): the default ruleset, never none."""
    from maculaos.host.config import config_file
    from maculaos.host.firewall import load_ruleset, render_default_ruleset

    load_ruleset(render_default_ruleset(), args.nft)
    print(f"maculaos agent apply: no {config_file(args.host_root)}: the default firewall loaded (policy drop; "
          f"SSH, mDNS, k3s, the first-boot wizard and the git server open)")
    return 0


def _pod_network(args: argparse.Namespace) -> int:
    """Write the node's CNI configuration once the cluster gave its Node a podCIDR (the kubelet reports the
    node NotReady until then)."""
    import socket

    from maculaos.host.kubernetes import KUBELET_KUBECONFIG, write_pod_network
    from maculaos.kube.rest import ApiError, ConfigError, Credentials, KubeClient

    node = args.node_name or socket.gethostname()
    deadline = time.monotonic() + args.wait
    last = "the kubelet has not joined yet"
    while True:
        try:
            kube = KubeClient(Credentials.from_kubeconfig(args.host_root / KUBELET_KUBECONFIG))
            cidr = (kube.get(f"/api/v1/nodes/{node}").get("spec") or {}).get("podCIDR")
            if cidr:
                changed = write_pod_network(args.host_root, cidr)
                print(f"pod network {cidr}: {'written' if changed else 'unchanged'}", flush=True)
                return 0
            last = f"Node {node} has no podCIDR yet"
        except (ApiError, ConfigError, OSError) as exc:
            problem = f"waiting: {exc}"
            if problem != last:   # said once, not every two seconds
                print(problem, file=sys.stderr, flush=True)
            last = problem
        if time.monotonic() >= deadline:
            raise MaculaosError(f"no pod network after {args.wait:.0f} s: {last}")
        time.sleep(2)


def _node_info(args: argparse.Namespace) -> int:
    """This node's version, mesh roles and realm (the login screen's and mDNS's source, seed 4.5/5.1)."""
    from maculaos.host.nodeinfo import read_node_info, write_node_info

    if args.write:
        for path in write_node_info(args.host_root):
            print(f"wrote {path}", file=sys.stderr)
    print(read_node_info(args.host_root).summary(), end="")
    return 0


def _agent_run(args: argparse.Namespace) -> int:
    import signal
    import ssl
    import threading

    from maculaos.agent import metrics
    from maculaos.agent.runner import Agent
    from maculaos.kube.rest import ConfigError, Credentials, KubeClient
    from maculaos.logs import configure_json_logging

    configure_json_logging(node=args.node_name)
    settings = AgentSettings(**{name: getattr(args, name) for name in RUN_SETTINGS})
    if not 0 <= settings.lan_neighbours_seconds <= MAX_LAN_NEIGHBOURS_SECONDS:  # NaN too
        raise MaculaosError(f"--lan-neighbours-seconds: {args.lan_neighbours_seconds} is not a number of seconds "
                            f"between 0 (never look) and {MAX_LAN_NEIGHBOURS_SECONDS}", exit_code=2)
    try:
        kube = KubeClient(Credentials.load())
    except (ConfigError, OSError, ssl.SSLError) as exc:
        raise MaculaosError(f"cannot reach the Kubernetes API: {exc}", exit_code=2) from exc
    agent = Agent(settings, kube)
    if args.metrics_port:
        host, _, port = args.metrics_port.rpartition(":")
        metrics.serve(host or "0.0.0.0", int(port),
                      lambda: time.time() - agent.last_pass < 3 * settings.resync_seconds + 10)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent.run(stop)
    return 0


def _backup(args: argparse.Namespace) -> int:
    """`maculaos backup list|run|restore` on this node, from its own config (no Kubernetes needed)."""
    from maculaos.host import backup_local
    from maculaos.host.restore import SnapshotChoice

    if args.action == "list":
        listed, lines = backup_local.list_snapshots(args.host_root, args.source, args.restic)
        print("\n".join(lines) or "no backups")
        return 0 if listed else 1
    if args.action == "run":
        ok, lines = backup_local.run_now(args.host_root, args.source, args.restic)
        print("\n".join(lines) or "no backups recorded on this node")
        return 0 if ok else 1
    choice = SnapshotChoice(snapshot_id=args.snapshot, latest=args.latest,
                            before=backup_local.parse_date(args.date) if args.date else None)
    print(backup_local.restore(args.host_root, args.source, choice, args.path, args.target_dir, args.restic,
                               args.source_node))
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    """`maculaos upgrade`: the node's own A/B upgrade with RAUC, no Kubernetes (seed 4.8)."""
    from maculaos.api.nodeupgrade import AgentPhase
    from maculaos.host import nodeupgrade

    upgrader = nodeupgrade.local_upgrader(args.host_root, args.rauc, args.rauc_conf, args.reboot_command)
    if args.check:
        status, lines = nodeupgrade.describe_slots(upgrader)
        print("\n".join(lines))
        if args.source_dir is None and not args.url:
            return 0
        release = _release(upgrader, args)
        bundle, problem = nodeupgrade.verify_bundle(upgrader, release, args.source_dir, status.compatible)
        if problem:
            print(f"available: {bundle}: {problem}", file=sys.stderr)
            return 1
        print(f"available: {release.version} ({bundle.name}; signature and compatible verified)")
        return 0
    if args.rollback:
        return _show(upgrader.rollback("asked for on the node (`maculaos upgrade --rollback`)"),
                     AgentPhase.REBOOTING, AgentPhase.ROLLED_BACK)
    if args.commit:
        upgrader.after_boot()
        return _show(upgrader.commit(nodeupgrade.HealthVerdict(True, ""), float("inf")), AgentPhase.SUCCEEDED)
    state = upgrader.install(_release(upgrader, args), args.source_dir, grant_time="cli")
    if state.phase is AgentPhase.INSTALLED and not args.no_reboot:
        state = upgrader.reboot("cli")
    return _show(state, AgentPhase.INSTALLED, AgentPhase.REBOOTING, AgentPhase.SUCCEEDED)


def _release(upgrader: NodeUpgrader, args: argparse.Namespace) -> Release:
    """The release `maculaos upgrade` is asked for: from --from DIR, or --url with --version."""
    from maculaos.host import nodeupgrade
    from maculaos.host.bundles import BundleError, Release

    if args.source_dir is not None:
        return nodeupgrade.local_release(upgrader, args.source_dir, args.target_version)
    if not args.url or not args.target_version:
        raise BundleError("give --from DIR, or --url with --version (and --sha256 to verify the download)")
    return Release(args.target_version, args.url, args.sha256)


def _show(state: UpgradeState, *good: AgentPhase) -> int:
    print(f"{state.phase.value}: {state.message}")
    return 0 if state.phase in good else 1


def _ask_target(medium: Medium) -> Path | None:
    """The console installer (the ISO's Install entry without an install config): which disk."""
    from maculaos.image import install as inst

    if not sys.stdin.isatty():
        print("MaculaOS installer: no macula.install.config= and no console to ask on. Install with "
              "`sudo maculaos install /dev/X [--config config.yaml]`")
        return None
    print(f"MaculaOS {medium.version} installer. Disks of this machine:")
    for path in inst.candidate_disks():
        try:
            target = inst.inspect_target(path)
            why = "; ".join(inst.refusals(target, medium)) or "can be used"
            print(f"  {path}  {target.size // 2**20} MiB  {why}")
        except inst.InstallError as exc:
            print(f"  {path}  {exc}")
    answer = input("Disk to install onto (e.g. /dev/sda; empty: no install, the live system stays up): ")
    return Path(answer.strip()) if answer.strip() else None


def _install(args: argparse.Namespace) -> int:
    """Install the live medium's system onto a disk (seed 8.2); see maculaos.image.install."""
    from maculaos.image import install as inst

    if args.auto:
        args.failure = "MACULAOS-INSTALL-FAILED"  # the line maculaos-install.service's watchers look for
    try:
        medium = inst.read_medium(args.source)
        config_path, target_path = args.config, args.target
        ask = not args.yes
        if args.auto:
            auto = inst.auto_settings(Path("/proc/cmdline").read_text(), args.source)
            config_path, target_path = config_path or auto.config, target_path or auto.target
            ask = config_path is None and target_path is None  # the "Install" entry with no settings
            if ask:
                target_path = _ask_target(medium)
                if target_path is None:
                    return 0
        config_text = inst.check_config(config_path) if config_path else None
        if target_path is None:
            if not args.auto:
                disks = ", ".join(str(d) for d in inst.candidate_disks()) or "none found"
                raise inst.InstallError(f"which disk? `maculaos install /dev/X` (disks: {disks})", exit_code=2)
            target = inst.choose_target(medium)
        else:
            target = inst.inspect_target(target_path)
        why = inst.refusals(target, medium)
        if why:
            raise inst.InstallError("; ".join(why))
        layout = inst.plan_install(target, medium)
        data = layout.part("data")
        print(f"MaculaOS {medium.version} onto {target.path} ({target.size // 2**20} MiB): ESP {medium.esp_mib} MiB, "
              f"slots A and B {medium.slot_mib} MiB each, data {data.size_mib} MiB"
              f"{', config.yaml from ' + str(config_path) if config_path else ''}. "
              f"EVERYTHING ON {target.path} IS ERASED.")
        if ask:
            answer = input(f"Type yes to erase {target.path} and install: ")
            if answer.strip() != "yes":
                print("maculaos install: not confirmed, nothing written", file=sys.stderr)
                return 1
        inst.install(target, medium, config_text)
    except (EOFError, KeyboardInterrupt):
        print("\nmaculaos install: not confirmed, nothing written", file=sys.stderr)
        return 1
    print(f"MACULAOS-INSTALLED target={target.path} version={medium.version}", flush=True)
    if args.then != "none":
        os.execvp("systemctl", ["systemctl", args.then])
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = commands.add_parser("agent", help="the node agent").add_subparsers(dest="action", required=True)
    run = options.command(agent, "run", _agent_run, "watch the kinds and converge this node's host")
    options.settings_flags(run, AgentSettings, RUN_SETTINGS, defaults={"host_root": Path("/host")},
                           env={"node_name": "NODE_NAME", "host_root": "HOST_ROOT", "restic": "MACULAOS_RESTIC"})
    run.add_argument("--metrics-port", default="",  # not a setting: the process serves it, not the agent loop
                     help="[address:]port for /metrics and /healthz; empty disables")
    apply = options.command(agent, "apply", _agent_apply, "converge this host once from "
                            "/var/lib/maculaos/config.yaml (no Kubernetes needed)",
                            failure="maculaos agent apply: nothing changed", reports=(ValueError,))
    apply.add_argument("--once", action="store_true", required=True, help="apply once and exit")
    options.settings_flags(apply, AgentSettings, APPLY_SETTINGS, defaults={"host_root": Path("/")},
                           env={"host_root": "HOST_ROOT"})

    _add_backup_commands(commands)

    pods = options.command(commands, "pod-network", _pod_network, "write this node's CNI configuration from "
                           "its Node's podCIDR (run at boot by maculaos-pod-network.service)")
    pods.add_argument("--node-name", default="", help="the Node (default: this host's name)")
    pods.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the podCIDR (default 600)")
    options.host_root(pods)

    node_info = options.command(commands, "node-info", _node_info, "this node's version, mesh roles and realm",
                                reports=(OSError,))
    node_info.add_argument("--write", action="store_true", help="also write /run/maculaos/node-info (read at "
                                                                "login) and the avahi _macula._tcp service file")
    options.host_root(node_info)

    upgrade = options.command(commands, "upgrade", _upgrade,
                              "A/B upgrade of this node with RAUC (no Kubernetes needed)")
    what = upgrade.add_mutually_exclusive_group(required=True)
    what.add_argument("--check", action="store_true", help="show slots and versions; with a source, verify "
                                                          "the bundle (signature, compatible) without installing")
    what.add_argument("--apply", action="store_true", help="install the bundle into the other slot and reboot")
    what.add_argument("--rollback", action="store_true", help="boot the other slot (the previous version)")
    what.add_argument("--commit", action="store_true", help="mark the running new slot good (after a reboot)")
    upgrade.add_argument("--from", dest="source_dir", type=Path, help="directory holding bundles (USB, airgap)")
    upgrade.add_argument("--url", help="bundle URL (http/https)")
    upgrade.add_argument("--sha256", help="expected SHA-256 of the bundle at --url")
    upgrade.add_argument("--version", dest="target_version",
                         help="version to install (default with --from: the newest bundle there)")
    upgrade.add_argument("--no-reboot", action="store_true", help="with --apply: stop once installed")
    options.host_root(upgrade)
    upgrade.add_argument("--rauc", default="rauc")
    upgrade.add_argument("--rauc-conf", type=Path, help="RAUC system.conf (default: <host root>/etc/rauc/system.conf)")
    upgrade.add_argument("--reboot-command", default="systemctl reboot")

    inst = options.command(commands, "install", _install, "install MaculaOS from the live ISO/USB stick onto a disk")
    inst.add_argument("target", type=Path, nargs="?", help="the whole disk (e.g. /dev/sda); erased")
    inst.add_argument("--config", type=Path, default=None, help="a config.yaml for the new node "
                      "(/var/lib/maculaos/config.yaml on its data partition)")
    inst.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    inst.add_argument("--auto", action="store_true", help="unattended: settings from the kernel command line "
                      "(macula.install.config=, macula.install.target=); maculaos-install.service runs it")
    inst.add_argument("--then", choices=["none", "poweroff", "reboot"], default="none",
                      help="after a successful install")
    inst.add_argument("--source", type=Path, default=Path("/run/maculaos/medium"),
                      help="the mounted live medium (default: the one this system booted from)")


def _add_backup_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = commands.add_parser("backup", help="list, run and restore this node's backups")
    actions = backup.add_subparsers(dest="action", required=True)
    for name, text in (("list", "list the snapshots of this node"), ("run", "back up this node now"),
                       ("restore", "restore this node's data from a snapshot")):
        sub = options.command(actions, name, _backup, text)
        options.host_root(sub)
        options.restic(sub)
        sub.add_argument("--from", dest="source", required=name == "restore",
                         help="a Backup's name or a target type: local, rest, mesh, s3")
    restore = actions.choices["restore"]
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument("--latest", action="store_true", help="the newest snapshot")
    which.add_argument("--date", help="as of a day (2026-01-15: end of that day, UTC) or a time (RFC 3339)")
    which.add_argument("--snapshot", help="a snapshot id (or its first 8+ characters)")
    restore.add_argument("--path", action="append", default=[], help="restore only this path (repeatable)")
    restore.add_argument("--target-dir", help="restore under this directory instead of the original places")
    restore.add_argument("--source-node", help="restore another node's snapshots (a replacement machine)")
