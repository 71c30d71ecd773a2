"""`maculaos recovery ...`: recovery mode, from a running node (reboot into it once) and inside it."""

from __future__ import annotations

import argparse
import shlex
import subprocess

from maculaos.cli import options


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


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    recovery = commands.add_parser("recovery", help="recovery mode: reboot into it, and repair the node there") \
        .add_subparsers(dest="action", required=True)
    reboot = options.command(recovery, "reboot", _reboot, "boot once in recovery mode (the network, SSH and a root "
                             "console; the data partition left unmounted to check or restore it)",
                             reports=(OSError,))
    reboot.add_argument("--no-reboot", action="store_true", help="ask for it at the next boot, do not reboot now")
    reboot.add_argument("--cancel", action="store_true", help="undo a recovery boot asked for with --no-reboot")
    reboot.add_argument("--reboot-command", default="systemctl reboot")
    reboot.add_argument("--grub-editenv", default="grub-editenv")
    options.host_root(reboot)
