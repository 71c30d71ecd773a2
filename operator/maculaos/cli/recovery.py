"""`maculaos recovery reboot`: one boot in recovery mode, asked for from a running node; `maculaos recovery
check | password | restore | status`: the tools of the recovery boot, where the data partition is not
mounted (maculaos.host.recovery). Each command mounts the partition only for as long as it needs it."""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import subprocess
import sys
from pathlib import Path

from maculaos.cli import options

HINTS = ("maculaos recovery check [--repair]       # e2fsck the data partition (--repair fixes what it finds)",
         "maculaos recovery password [--hash HASH] # set the console password in its config.yaml",
         "maculaos recovery restore --repo REPO    # bring /var/lib/maculaos back from a backup")
#: restic's own variables for a target's credentials and TLS, passed on as they are.
RESTIC_ENV = ("RESTIC_REST_USERNAME", "RESTIC_REST_PASSWORD", "RESTIC_CACERT", "RESTIC_TLS_CLIENT_CERT")


def _reboot(args: argparse.Namespace) -> int:
    from maculaos.host import recovery_reboot
    if args.cancel:
        cancelled = recovery_reboot.cancel(args.host_root, args.grub_editenv)
        print("recovery boot cancelled" if cancelled else "no recovery boot was asked for")
        return 0
    recovery_reboot.schedule(args.host_root, args.grub_editenv)
    what = ("recovery mode for the next boot only: the network, SSH as root with config.yaml's keys and a root "
            "console, the data partition left unmounted")
    if args.no_reboot:
        print(f"{what}; `maculaos recovery reboot --cancel` undoes this before then")
        return 0
    print(f"{what}: rebooting", flush=True)
    return subprocess.run(shlex.split(args.reboot_command), check=False).returncode


def _check(args: argparse.Namespace) -> int:
    from maculaos.host import recovery
    device = recovery.find_device(args.device)
    result = recovery.check(device, args.repair)
    print(f"data partition {device}: {result.words} (e2fsck exit {result.code})", flush=True)
    return 0 if result.clean else 1


def _password(args: argparse.Namespace) -> int:
    from maculaos.host import recovery
    device = recovery.find_device(args.device)
    if args.hash is not None:
        password_hash = recovery.checked_hash(args.hash)
    else:
        first = getpass.getpass("new console password: ")
        if getpass.getpass("again: ") != first:
            print("maculaos recovery password: the two passwords differ, nothing written", file=sys.stderr)
            return 2
        password_hash = recovery.hash_password(first)
    changed = recovery.set_password(device, args.mount_dir, password_hash)
    said = "set" if changed else "already set to this hash"
    print(f"password_hash {said} in {device}'s /var/lib/maculaos/config.yaml; {device} is unmounted again. "
          "The next normal boot applies it to the login user.")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from maculaos.host import recovery
    from maculaos.host.hostname import check_hostname
    from maculaos.host.restic import Repository, Restic
    choice = recovery.snapshot_choice(args.snapshot)
    if args.host is not None:
        try:
            check_hostname(args.host)
        except ValueError as exc:
            raise recovery.RecoveryError(str(exc).replace("{key}", "--host")) from exc
    if not args.repo.strip():
        raise recovery.RecoveryError("--repo is empty: give the repository (a path, rest:http://..., s3:...)")
    password = _repository_password(args.password_file)
    device = recovery.find_device(args.device)
    env = {k: v for k, v in os.environ.items() if k in RESTIC_ENV or k.startswith("AWS_")}
    restic = Restic(Repository(args.repo, password, env), args.restic)
    print(f"restoring {recovery.STATE} from {restic.repo.display()} ({choice.describe()}) into {device}", flush=True)
    done = recovery.restore_state(device, args.mount_dir, restic, choice, args.host)
    snapshot = done.snapshot
    of = f" of {snapshot.hostname}" if snapshot.hostname else ""
    print(f"restored {recovery.STATE} from snapshot {snapshot.short_id or snapshot.id[:8]}{of} taken "
          f"{snapshot.time.isoformat(timespec='seconds')}")
    if done.aside:
        print(f"the previous {recovery.STATE} is kept aside as /{done.aside} (the partition's var/ is the node's "
              "/var): delete it once the node runs well")
    print(f"{device} is unmounted again; the next normal boot uses the restored state.")
    return 0


def _repository_password(password_file: Path | None) -> str:
    """--password-file, else restic's RESTIC_PASSWORD(_FILE), else asked for at a terminal."""
    from maculaos.host.recovery import RecoveryError
    file = password_file or (Path(os.environ["RESTIC_PASSWORD_FILE"]) if os.environ.get("RESTIC_PASSWORD_FILE")
                             else None)
    if file is not None:
        try:
            password = file.read_text().rstrip("\n")
        except OSError as exc:
            raise RecoveryError(f"--password-file {file}: {exc.strerror or exc}") from exc
        if not password:
            raise RecoveryError(f"--password-file {file} is empty")
        return password
    if os.environ.get("RESTIC_PASSWORD"):
        return os.environ["RESTIC_PASSWORD"]
    if sys.stdin.isatty():
        return getpass.getpass("repository password: ")
    raise RecoveryError("no repository password: set RESTIC_PASSWORD or give --password-file")


def _status(args: argparse.Namespace) -> int:
    from maculaos.host import recovery
    from maculaos.host.rauc import Rauc
    found = True
    try:
        device = recovery.find_device(args.device)
        lines = recovery.partition_lines(device)
    except recovery.RecoveryError as exc:
        found, lines = False, [f"data partition: {exc}"]
    lines += recovery.slot_lines(Rauc(args.rauc))
    print("\n".join([*lines, "", "commands:", *(f"  {hint}" for hint in HINTS)]))
    return 0 if found else 1


def _partition_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="the data partition, or an ext4 image file (default: the partition labelled MACULA_DATA)")
    parser.add_argument("--mount-dir", type=Path, default=Path("/run/maculaos/recovery/data"),
                        help="where commands mount it while they work (default: /run/maculaos/recovery/data)")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    recovery = commands.add_parser("recovery", help="recovery mode: reboot into it; there, check and repair the "
                                   "data partition, reset the console password, restore /var/lib/maculaos")
    sub = recovery.add_subparsers(dest="recovery_command", required=True)
    reboot = options.command(sub, "reboot", _reboot, "boot once in recovery mode (the network, SSH and a root "
                             "console; the data partition left unmounted to check or restore it)",
                             reports=(OSError,))
    reboot.add_argument("--no-reboot", action="store_true", help="ask for it at the next boot, do not reboot now")
    reboot.add_argument("--cancel", action="store_true", help="undo a recovery boot asked for with --no-reboot")
    reboot.add_argument("--reboot-command", default="systemctl reboot")
    reboot.add_argument("--grub-editenv", default="grub-editenv")
    options.host_root(reboot)
    check = options.command(sub, "check", _check, "e2fsck the unmounted data partition (read-only without --repair)",
                            reports=(OSError,))
    check.add_argument("--repair", action="store_true", help="repair what e2fsck finds (e2fsck -y)")
    password = options.command(sub, "password", _password, "set the login user's console password in the data "
                               "partition's config.yaml (asked for twice without --hash)", reports=(OSError,))
    password.add_argument("--hash", default=None,
                          help="a crypt(3) hash to set as it is (`mkpasswd -m yescrypt`, `openssl passwd -6`)")
    restore = options.command(sub, "restore", _restore, "restore /var/lib/maculaos from the node's backup repository "
                              "(the folder there is kept aside)", reports=(OSError,))
    restore.add_argument("--repo", required=True, help="the restic repository: a path, rest:http://host:port/..., "
                         "s3:https://host/bucket/... (credentials: restic's usual environment variables)")
    restore.add_argument("--snapshot", default="latest", help="a snapshot id, or latest (default): the newest "
                         "snapshot of this node that includes /var/lib/maculaos")
    restore.add_argument("--password-file", type=Path, default=None,
                         help="a file holding the repository password (default: $RESTIC_PASSWORD, else asked)")
    restore.add_argument("--host", default=None, help="the node whose newest snapshot latest picks (default: the "
                         "name recorded on the data partition, else any node's)")
    options.restic(restore)
    status = options.command(sub, "status", _status, "the data partition, the A/B slots and these commands",
                             reports=(OSError,))
    status.add_argument("--rauc", default="rauc", help="the rauc command (slot states)")
    for parser in (check, password, restore, status):
        _partition_options(parser)
