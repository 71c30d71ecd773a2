"""`maculaos factory-reset`: this node back to first-boot mode, keeping its OS (the reset itself happens in
the next boot's initramfs; maculaos.host.factory_reset)."""

from __future__ import annotations

import argparse
import shlex
import subprocess

from maculaos.cli import options


def _factory_reset(args: argparse.Namespace) -> int:
    from maculaos.host import factory_reset
    if args.cancel:
        cancelled = factory_reset.cancel(args.host_root, args.grub_editenv)
        print("factory reset cancelled" if cancelled else "no factory reset was scheduled")
        return 0
    if not args.confirm:
        print("maculaos factory-reset: this wipes the node's configuration, credentials, Kubernetes state, logs "
              "and /etc changes" + (", and /var/lib/data" if args.wipe_data else " (/var/lib/data is kept)") +
              "; the OS slots stay. Run it again with --confirm to go ahead.", flush=True)
        return 2
    mode = factory_reset.schedule(args.host_root, args.wipe_data, args.grub_editenv)
    kept = "/var/lib/data wiped too" if mode == "all" else "/var/lib/data kept"
    if args.no_reboot:
        print(f"factory reset scheduled ({kept}): the next boot performs it; `maculaos factory-reset --cancel` "
              "undoes this before then")
        return 0
    print(f"factory reset scheduled ({kept}): rebooting", flush=True)
    return subprocess.run(shlex.split(args.reboot_command), check=False).returncode


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reset = options.command(commands, "factory-reset", _factory_reset,
                            "wipe this node's configuration and state and reboot into first-boot mode; the OS "
                            "stays", reports=(OSError,))
    what = reset.add_mutually_exclusive_group()
    what.add_argument("--confirm", action="store_true", help="go ahead (without it: say what would be wiped)")
    what.add_argument("--cancel", action="store_true", help="undo a reset scheduled with --no-reboot")
    reset.add_argument("--wipe-data", action="store_true", help="also wipe /var/lib/data (kept by default)")
    reset.add_argument("--no-reboot", action="store_true", help="schedule it for the next boot, do not reboot now")
    reset.add_argument("--reboot-command", default="systemctl reboot")
    reset.add_argument("--grub-editenv", default="grub-editenv")
    options.host_root(reset)
