"""`maculaos ...`: the one command line of the project (CRDs, the operator, the local environment)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from maculaos import __version__
from maculaos.api.common import DEFAULT_NAMESPACE

if TYPE_CHECKING:
    from maculaos.image.definition import ImageDefinition
    from maculaos.image.install import Medium

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_CRDS = REPO_ROOT / "crds"
CHART_CRDS = REPO_ROOT / "charts" / "maculaos-crds" / "templates"


def _crds_generate(args: argparse.Namespace) -> int:
    from maculaos.api.crd import chart_crd_files, crd_files

    targets: list[tuple[Path, dict[str, str]]] = [(args.output, crd_files())]
    chart_output = args.chart_output or (CHART_CRDS if args.output == REPO_CRDS else None)
    if chart_output is not None:
        targets.append((chart_output, chart_crd_files()))
    if args.check:
        problems = [f"{out}: {', '.join(names)}" for out, files in targets if (names := _stale(out, files))]
        if problems:
            print(f"generated CRDs are out of date ({'; '.join(problems)}): run `maculaos crds generate`",
                  file=sys.stderr)
            return 1
        return 0
    for out, files in targets:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
            print(out / name)
    return 0


def _stale(out: Path, files: dict[str, str]) -> list[str]:
    """Names in out that differ from files, are missing, or are left over (*.yaml only)."""
    stale = [n for n, text in files.items() if not (out / n).exists() or (out / n).read_text() != text]
    return stale + sorted(p.name for p in out.glob("*.yaml") if p.name not in files)


def _configure_logging(fmt: str, verbose: bool) -> None:
    import kopf

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if fmt == "json" else kopf.LogFormat.FULL)


def _without_generated_client() -> None:
    """kopf imports the generated `kubernetes` client whenever it is installed, only to recognise its model
    objects, which the operator never hands it: about 30 MiB of RSS for nothing. It is not in the operator
    image; where it is installed (the development venv: tests, demo, benchmarks), this process does without
    it too, so it runs, and measures, as in its image."""
    if "kubernetes" not in sys.modules:
        sys.modules["kubernetes"] = None  # type: ignore[assignment]  # `import kubernetes` raises ImportError


def _operator_run(args: argparse.Namespace) -> int:
    _without_generated_client()
    from maculaos.controller.run import run_operator, run_with_leader_election
    from maculaos.kube.rest import ConfigError, Credentials

    _configure_logging(args.log_format, args.verbose)
    try:
        credentials = Credentials.load()
    except ConfigError as exc:
        print(f"maculaos operator run: cannot reach the Kubernetes API: {exc}", file=sys.stderr)
        return 2
    if args.leader_elect:
        run_with_leader_election(args.resync_seconds, args.namespace, credentials,
                                 lease_duration=args.lease_duration)
    else:
        run_operator(args.resync_seconds, credentials)
    return 0


def _agent_apply(args: argparse.Namespace) -> int:
    """Converge the host from its own config.yaml, without Kubernetes: the boot path of a node."""
    from maculaos.host.backup_server import backup_server_warnings
    from maculaos.host.config import HostConfigError, read_config
    from maculaos.host.firewall import FirewallError
    from maculaos.host.mesh import apply_mesh, plan_from_config, services_not_installed
    from maculaos.host.systemd import Systemd, SystemdError

    systemd = Systemd(args.host_root, live=args.live_systemd, systemctl=args.systemctl)
    try:
        plan = plan_from_config(read_config(args.host_root))
        changes = apply_mesh(args.host_root, plan, systemd, args.nft)
    except (ValueError, HostConfigError, FirewallError, SystemdError) as exc:
        print(f"maculaos agent apply: nothing changed: {exc}", file=sys.stderr)
        return 1
    roles = ",".join(["peer", *sorted(r.value for r in plan.roles)])
    print(f"mesh roles {roles}: config {'updated' if changes.config else 'unchanged'}, "
          f"units changed: {', '.join(changes.units) or 'none'}, "
          f"firewall {'reloaded' if changes.firewall else 'unchanged'}")
    for warning in services_not_installed(args.host_root, plan) + backup_server_warnings(args.host_root):
        print(f"maculaos agent apply: warning: {warning}")
    return 0


def _node_info(args: argparse.Namespace) -> int:
    """This node's version, mesh roles and realm (the login screen's and mDNS's source, seed 4.5/5.1)."""
    from maculaos.host.config import HostConfigError
    from maculaos.host.nodeinfo import read_node_info, write_node_info

    try:
        if args.write:
            for path in write_node_info(args.host_root):
                print(f"wrote {path}", file=sys.stderr)
        print(read_node_info(args.host_root).summary(), end="")
    except (HostConfigError, OSError) as exc:
        print(f"maculaos node-info: {exc}", file=sys.stderr)
        return 1
    return 0


def _agent_run(args: argparse.Namespace) -> int:
    import signal
    import ssl
    import threading

    from maculaos.agent import metrics
    from maculaos.agent.runner import Agent, AgentSettings
    from maculaos.kube.rest import ConfigError, Credentials, KubeClient
    from maculaos.logs import configure_json_logging

    configure_json_logging(node=args.node_name)
    settings = AgentSettings(node_name=args.node_name, host_root=args.host_root, resync_seconds=args.resync_seconds,
                             nft=args.nft, systemctl=args.systemctl, live_systemd=args.live_systemd,
                             restic=args.restic, rauc=args.rauc, rauc_conf=args.rauc_conf,
                             reboot_command=args.reboot_command)
    try:
        kube = KubeClient(Credentials.load())
    except (ConfigError, OSError, ssl.SSLError) as exc:
        print(f"maculaos agent run: cannot reach the Kubernetes API: {exc}", file=sys.stderr)
        return 2
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
    from maculaos.host.restic import ResticError
    from maculaos.host.restore import SnapshotChoice

    try:
        if args.action == "list":
            print("\n".join(backup_local.list_snapshots(args.host_root, args.source, args.restic)) or "no backups")
            return 0
        if args.action == "run":
            ok, lines = backup_local.run_now(args.host_root, args.source, args.restic)
            print("\n".join(lines) or "no backups recorded on this node")
            return 0 if ok else 1
        choice = SnapshotChoice(snapshot_id=args.snapshot, latest=args.latest,
                                before=backup_local.parse_date(args.date) if args.date else None)
        print(backup_local.restore(args.host_root, args.source, choice, args.path, args.target_dir, args.restic,
                                   args.source_node))
    except ResticError as exc:
        print(f"maculaos backup {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_backup_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    backup = commands.add_parser("backup", help="list, run and restore this node's backups (seed 4.13.2)")
    actions = backup.add_subparsers(dest="action", required=True)
    for name, text in (("list", "list the snapshots of this node"), ("run", "back up this node now"),
                       ("restore", "restore this node's data from a snapshot")):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("--host-root", type=Path, default=Path(os.environ.get("HOST_ROOT", "/")))
        sub.add_argument("--restic", default=os.environ.get("MACULAOS_RESTIC", "restic"))
        sub.add_argument("--from", dest="source", required=name == "restore",
                         help="a Backup's name or a target type: local, rest, mesh, s3")
        sub.set_defaults(func=_backup)
    restore = actions.choices["restore"]
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument("--latest", action="store_true", help="the newest snapshot")
    which.add_argument("--date", help="as of a day (2026-01-15: end of that day, UTC) or a time (RFC 3339)")
    which.add_argument("--snapshot", help="a snapshot id (or its first 8+ characters)")
    restore.add_argument("--path", action="append", default=[], help="restore only this path (repeatable)")
    restore.add_argument("--target-dir", help="restore under this directory instead of the original places")
    restore.add_argument("--source-node", help="restore another node's snapshots (a replacement machine)")
def _upgrade(args: argparse.Namespace) -> int:
    """`maculaos upgrade`: the node's own A/B upgrade with RAUC, no Kubernetes (seed 4.8)."""
    from maculaos.host.upgrade import upgrade_command

    return upgrade_command(args)


def _dev_up(args: argparse.Namespace) -> int:
    from maculaos.devenv.demo import Demo, DemoError

    try:
        Demo(args.workdir, REPO_ROOT).up(node_count=args.nodes)
    except DemoError as exc:
        print(f"maculaos dev up failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _dev_down(args: argparse.Namespace) -> int:
    from maculaos.devenv.demo import Demo

    Demo(args.workdir, REPO_ROOT).down(keep=args.keep)
    return 0


def _dev_manifests(args: argparse.Namespace) -> int:
    from maculaos.devenv.controlplane import default_bin_dir
    from maculaos.devenv.manifests import render_manifests, stale_manifests

    out: Path = args.output
    files = render_manifests(default_bin_dir() / "helm", REPO_ROOT)
    if args.check:
        stale = stale_manifests(out, files)
        if stale:
            print(f"{out} is out of date ({', '.join(stale)}): run `maculaos dev manifests`", file=sys.stderr)
        return 1 if stale else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(out / name)
    return 0


def _image_definition(args: argparse.Namespace) -> "ImageDefinition":
    from maculaos.image.definition import load_definition

    definition = load_definition(args.definition, args.extend)
    if getattr(args, "arch", None):
        definition = definition.for_arch(args.arch)
    return definition.select(args.profiles.split(",")) if args.profiles else definition


def _image_show(args: argparse.Namespace) -> int:
    from maculaos.image.definition import DefinitionError

    try:
        definition = _image_definition(args)
    except DefinitionError as exc:
        print(f"maculaos image: {exc}", file=sys.stderr)
        return 1
    print(definition.model_dump_json(by_alias=True, indent=2))
    return 0


def _image_build(args: argparse.Namespace) -> int:
    from maculaos.image.airgap import AirgapError
    from maculaos.image.build import BuildError, BuildInputs, ImageBuilder, default_cache, summary
    from maculaos.image.definition import DefinitionError
    from maculaos.image.signing import SigningError, development_identity, given_identity

    try:
        if bool(args.signing_key) != bool(args.signing_cert):
            raise SigningError("--signing-key and --signing-cert go together")
        signing = (given_identity(args.signing_key, args.signing_cert, args.keyring) if args.signing_key
                   else development_identity(args.cache or default_cache()))
        inputs = BuildInputs(_image_definition(args), REPO_ROOT, signing, args.k3s_binary,
                             args.operator_image)
        result = ImageBuilder(inputs, args.out, args.cache).build()
    except (DefinitionError, BuildError, SigningError, AirgapError) as exc:
        print(f"maculaos image build failed: {exc}", file=sys.stderr)
        return 1
    print(summary(result))
    return 0


def _image_iso(args: argparse.Namespace) -> int:
    """A custom ISO from a finished build's files (e.g. one that installs unattended with a config)."""
    from maculaos.image.build import source_date_epoch
    from maculaos.image.definition import DefinitionError
    from maculaos.image.install import InstallError, check_config
    from maculaos.image.iso import IsoError, build_iso, inputs_for

    try:
        if args.install_config:
            check_config(args.install_config)
        inputs = inputs_for(_image_definition(args), args.build, source_date_epoch(REPO_ROOT),
                            args.default or ("install" if args.install_config else "live"), args.cmdline_extra,
                            args.install_config)
        print(build_iso(inputs, args.out))
    except (DefinitionError, IsoError, InstallError) as exc:
        print(f"maculaos image iso failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _ask_target(medium: "Medium") -> Path | None:
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
                print(f"maculaos install: which disk? `maculaos install /dev/X` (disks: {disks})", file=sys.stderr)
                return 2
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
              f"{', config.yaml from ' + str(config_path) if config_path else ''}. EVERYTHING ON {target.path} IS ERASED.")
        if ask:
            answer = input(f"Type yes to erase {target.path} and install: ")
            if answer.strip() != "yes":
                print("maculaos install: not confirmed, nothing written", file=sys.stderr)
                return 1
        inst.install(target, medium, config_text)
    except inst.InstallError as exc:
        print(f"MACULAOS-INSTALL-FAILED: {exc}" if args.auto else f"maculaos install: {exc}", file=sys.stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print("\nmaculaos install: not confirmed, nothing written", file=sys.stderr)
        return 1
    print(f"MACULAOS-INSTALLED target={target.path} version={medium.version}", flush=True)
    if args.then != "none":
        os.execvp("systemctl", ["systemctl", args.then])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maculaos", description=__doc__)
    parser.add_argument("--version", action="version", version=f"maculaos {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    crds = commands.add_parser("crds", help="CustomResourceDefinitions").add_subparsers(dest="action", required=True)
    generate = crds.add_parser("generate", help="write crds/*.yaml from the API models")
    generate.add_argument("--output", type=Path, default=REPO_CRDS)
    generate.add_argument("--chart-output", type=Path, default=None,
                          help="where the maculaos-crds chart's CRD templates go (default: the chart's "
                               "templates/ when --output is the repository's crds/, else none)")
    generate.add_argument("--check", action="store_true", help="fail if the files differ instead of writing")
    generate.set_defaults(func=_crds_generate)

    operator = commands.add_parser("operator", help="the cluster-wide controller").add_subparsers(
        dest="action", required=True)
    run = operator.add_parser("run", help="run the controller against $KUBECONFIG or in-cluster credentials")
    run.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                     help="hold a Lease so that only one of several replicas acts (default: on)")
    run.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", DEFAULT_NAMESPACE),
                     help="namespace of the leader-election Lease")
    run.add_argument("--lease-duration", type=int, default=15,
                     help="seconds a leader's Lease is valid: how long a failover can take")
    run.add_argument("--resync-seconds", type=float,
                     default=float(os.environ.get("MACULAOS_RESYNC_SECONDS", "30")),
                     help="re-judge every object this often, so cluster changes are picked up")
    run.add_argument("--log-format", choices=["json", "plain"], default="json")
    run.add_argument("--verbose", action="store_true")
    run.set_defaults(func=_operator_run)

    agent = commands.add_parser("agent", help="the node agent").add_subparsers(dest="action", required=True)
    agent_run = agent.add_parser("run", help="watch the kinds and converge this node's host")
    agent_run.add_argument("--node-name", default=os.environ.get("NODE_NAME"), required="NODE_NAME" not in os.environ,
                           help="this node's Node name (default: $NODE_NAME)")
    agent_run.add_argument("--host-root", type=Path, default=Path(os.environ.get("HOST_ROOT", "/host")),
                           help="where the node's root filesystem is mounted (default: /host)")
    agent_run.add_argument("--resync-seconds", type=float, default=30.0)
    agent_run.add_argument("--nft", default="nft", help="nft command")
    agent_run.add_argument("--systemctl", default="systemctl", help="systemctl command")
    agent_run.add_argument("--live-systemd", action="store_true",
                           help="talk to the running systemd instead of `systemctl --root=<host root>`")
    agent_run.add_argument("--restic", default=os.environ.get("MACULAOS_RESTIC", "restic"),
                           help="restic command for Backups and Restores (default: $MACULAOS_RESTIC or restic)")
    agent_run.add_argument("--rauc", default="rauc", help="rauc command (talks to $DBUS_SYSTEM_BUS_ADDRESS)")
    agent_run.add_argument("--rauc-conf", default="", help="RAUC system.conf (default: <host root>/etc/rauc/system.conf)")
    agent_run.add_argument("--reboot-command", default="systemctl reboot",
                           help="how to reboot the node when a NodeUpgrade grants it")
    agent_run.add_argument("--metrics-port", default="",
                           help="[address:]port for /metrics and /healthz; empty disables")
    agent_run.set_defaults(func=_agent_run)
    apply = agent.add_parser("apply", help="converge this host once from /var/lib/maculaos/config.yaml "
                                           "(no Kubernetes needed)")
    apply.add_argument("--once", action="store_true", required=True, help="apply once and exit")
    apply.add_argument("--host-root", type=Path, default=Path(os.environ.get("HOST_ROOT", "/")))
    apply.add_argument("--nft", default="nft")
    apply.add_argument("--systemctl", default="systemctl")
    apply.add_argument("--live-systemd", action="store_true",
                       help="talk to the running systemd instead of `systemctl --root=<host root>`")
    apply.set_defaults(func=_agent_apply)

    _add_backup_commands(commands)

    node_info = commands.add_parser("node-info", help="this node's version, mesh roles and realm")
    node_info.add_argument("--write", action="store_true", help="also write /run/maculaos/node-info (read at "
                                                                "login) and the avahi _macula._tcp service file")
    node_info.add_argument("--host-root", type=Path, default=Path(os.environ.get("HOST_ROOT", "/")))
    node_info.set_defaults(func=_node_info)

    upgrade = commands.add_parser("upgrade", help="A/B upgrade of this node with RAUC (no Kubernetes needed)")
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
    upgrade.add_argument("--host-root", type=Path, default=Path(os.environ.get("HOST_ROOT", "/")))
    upgrade.add_argument("--rauc", default="rauc")
    upgrade.add_argument("--rauc-conf", type=Path, help="RAUC system.conf (default: <host root>/etc/rauc/system.conf)")
    upgrade.add_argument("--reboot-command", default="systemctl reboot")
    upgrade.set_defaults(func=_upgrade)
    image = commands.add_parser("image", help="the MaculaOS OS image (image-build/)").add_subparsers(
        dest="action", required=True)
    for name, func, text in (("show", _image_show, "print the definition merged with its extensions"),
                             ("build", _image_build, "build squashfs, kernel and initrd into --out")):
        cmd = image.add_parser(name, help=text)
        cmd.add_argument("--definition", type=Path, default=REPO_ROOT / "image-build" / "maculaos.yaml")
        cmd.add_argument("--extend", type=Path, action="append", default=[], metavar="FILE",
                         help="a custom build's additions (packages, overlays, files, firstboot), repeatable")
        cmd.add_argument("--profiles", default="", help="comma-separated package profiles instead of the "
                                                        "definition's `profiles`")
        cmd.add_argument("--arch", default="", help="amd64 or arm64 instead of the definition's `arch` (a "
                                                    "foreign one is built under qemu-user-static)")
        cmd.set_defaults(func=func)
    cmd.add_argument("--out", type=Path, default=REPO_ROOT / "dist")
    cmd.add_argument("--cache", type=Path, default=None, help="download cache (default ~/.cache/maculaos/image)")
    cmd.add_argument("--k3s-binary", type=Path, default=None,
                     help="a k3s binary to include; without it the image says plainly that k3s is missing")
    cmd.add_argument("--signing-key", type=Path, default=None, help="PEM key that signs the RAUC bundle and "
                     "SHA256SUMS; without it a throwaway development CA from the build cache signs (and says so)")
    cmd.add_argument("--signing-cert", type=Path, default=None, help="PEM certificate of --signing-key")
    cmd.add_argument("--keyring", type=Path, default=None,
                     help="PEM CA certificate(s) the image trusts for bundles (default: --signing-cert)")
    cmd.add_argument("--operator-image", type=Path, default=None, metavar="ARCHIVE",
                     help="the operator's OCI archive to pre-load (default: built from this checkout by "
                          "image-build/operator-image/build.py, cached by its inputs)")

    iso = image.add_parser("iso", help="a custom live/installer ISO from a finished build (--build)")
    iso.add_argument("--definition", type=Path, default=REPO_ROOT / "image-build" / "maculaos.yaml")
    iso.add_argument("--extend", type=Path, action="append", default=[], metavar="FILE")
    iso.add_argument("--profiles", default="")
    iso.add_argument("--build", type=Path, default=REPO_ROOT / "dist", help="the build's output folder")
    iso.add_argument("--out", type=Path, required=True, help="the ISO to write")
    iso.add_argument("--install-config", type=Path, default=None, metavar="CONFIG_YAML",
                     help="put this config.yaml on the ISO and make `install` the default entry: the ISO "
                          "installs unattended onto the machine's only disk, then powers off")
    iso.add_argument("--default", choices=["live", "install", "recovery"], default=None)
    iso.add_argument("--cmdline-extra", default="", help="appended to every entry's kernel command line "
                     "(e.g. macula.install.target=/dev/sda, console=ttyS0 for a serial console)")
    iso.set_defaults(func=_image_iso)

    inst = commands.add_parser("install", help="install MaculaOS from the live ISO/USB stick onto a disk")
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
    inst.set_defaults(func=_install)

    dev = commands.add_parser("dev", help="the local demo environment").add_subparsers(dest="action", required=True)
    up = dev.add_parser("up", help="start a control plane, simulated nodes, the operator, and apply examples/")
    up.add_argument("--workdir", type=Path, default=REPO_ROOT / ".demo")
    up.add_argument("--nodes", type=int, default=3)
    up.set_defaults(func=_dev_up)
    down = dev.add_parser("down", help="stop everything `dev up` started")
    down.add_argument("--workdir", type=Path, default=REPO_ROOT / ".demo")
    down.add_argument("--keep", action="store_true", help="keep the work directory (logs, node sandboxes)")
    down.set_defaults(func=_dev_down)
    manifests = dev.add_parser("manifests", help="render deploy/kustomize/ from the charts and the API models")
    manifests.add_argument("--output", type=Path, default=REPO_ROOT / "deploy" / "kustomize")
    manifests.add_argument("--check", action="store_true", help="fail if the files differ instead of writing")
    manifests.set_defaults(func=_dev_manifests)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("operator", "agent"):  # those configure their own structured logging
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
