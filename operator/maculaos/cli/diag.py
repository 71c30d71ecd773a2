"""`maculaos diag network | storage | mesh | --full`: a node's health in pass/fail lines, bounded in time,
and with --full a support bundle. Run on the node itself (or with --host-root on its disk); the imports
stay inside the command, as for the other node commands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from maculaos.cli import options

SECTIONS = ("network", "storage", "mesh")


def _diag(args: argparse.Namespace) -> int:
    from maculaos.host.diag import Check, Section, Status, check_mesh, failed, read_config_for_diag
    from maculaos.host.diag_bundle import write_bundle
    from maculaos.host.diag_network import check_network
    from maculaos.host.diag_storage import check_storage
    from maculaos.host.rauc import Rauc

    if args.timeout <= 0:
        raise argparse.ArgumentTypeError(f"--timeout must be a positive number of seconds, not {args.timeout:g}")
    sections = [Section(s) for s in (SECTIONS if args.full or not args.sections else args.sections)]
    config, problem = read_config_for_diag(args.host_root)
    conf = args.rauc_conf or args.host_root / "etc/rauc/system.conf"
    rauc = Rauc(args.rauc, conf if conf.exists() else None, root=args.host_root)
    started = time.monotonic()
    checks: list[Check] = [problem] if problem and sections != [Section.STORAGE] else []
    for section in sections:
        if section is Section.NETWORK:
            checks += check_network(config, args.timeout)
        elif section is Section.STORAGE:
            checks += check_storage(args.host_root, rauc, args.timeout)
        else:
            checks += check_mesh(config)
    for check in checks:
        print(check.line(), flush=True)
    failures = sum(c.status is Status.FAIL for c in checks)
    print(f"{failures} of {len(checks)} checks failed ({time.monotonic() - started:.1f} s)")
    if args.full:
        output = args.output_dir or args.host_root / "var/lib/maculaos/support"
        print(f"support bundle: {write_bundle(args.host_root, output, checks, rauc, args.timeout)}")
    return 1 if failed(checks) else 0


def _section(value: str) -> str:
    """argparse's choices with nargs="*" refuses an empty list on Python 3.11: checked here instead."""
    if value not in SECTIONS:
        raise argparse.ArgumentTypeError(f"no section {value!r} (choose from {', '.join(SECTIONS)})")
    return value


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    diag = options.command(commands, "diag", _diag, "check this node's network, storage and mesh (pass/fail "
                           "lines, each bounded in time); --full also writes a support bundle",
                           reports=(argparse.ArgumentTypeError, OSError))
    diag.add_argument("sections", nargs="*", type=_section, metavar="SECTION",
                      help=f"what to check: {', '.join(SECTIONS)} (default: all)")
    diag.add_argument("--full", action="store_true", help="every section, then a support bundle (tar.gz: journal, "
                      "config.yaml without secrets, slot states, the agent's state files); prints its path")
    diag.add_argument("--timeout", type=float, default=3.0,
                      help="seconds each probe may take before it counts as unreachable (default 3)")
    diag.add_argument("--output-dir", type=Path, default=None,
                      help="where --full writes the bundle (default: <host root>/var/lib/maculaos/support)")
    options.host_root(diag)
    diag.add_argument("--rauc", default="rauc", help="the rauc command (slot states)")
    diag.add_argument("--rauc-conf", type=Path, default=None,
                      help="RAUC system.conf (default: <host root>/etc/rauc/system.conf)")
