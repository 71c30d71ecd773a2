"""`maculaos ...`: the one command line of the project (CRDs, the operator, the local environment)."""

from __future__ import annotations

import argparse
import logging
import sys

from maculaos import __version__
from maculaos.cli import cluster, decommission, dev, diag, gitops, node, recovery, reset, setup
from maculaos.errors import MaculaosError


def build_parser() -> argparse.ArgumentParser:
    """The commands by audience: a node's (maculaos.cli.node, .diag, .reset, .recovery, .setup), the cluster's
    (maculaos.cli.cluster, .decommission), a developer's (maculaos.cli.dev)."""
    parser = argparse.ArgumentParser(prog="maculaos", description=__doc__)
    parser.add_argument("--version", action="version", version=f"maculaos {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    cluster.add_commands(commands)
    decommission.add_commands(commands)
    node.add_commands(commands)
    diag.add_commands(commands)
    reset.add_commands(commands)
    recovery.add_commands(commands)
    gitops.add_commands(commands)
    setup.add_commands(commands)
    dev.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. The one place where errors become what a person reads: a MaculaosError (or an
    error of a type the command reports, options.command) ends the command with "<failure>: <message>"
    on stderr and the error's exit code, without a traceback."""
    args = build_parser().parse_args(argv)
    if args.command not in ("operator", "agent"):  # those configure their own structured logging
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(args.func(args))
    except MaculaosError as exc:
        return die(args.failure, exc, exc.exit_code)
    except args.reports as exc:
        return die(args.failure, exc)


def die(failure: str, error: BaseException, exit_code: int = 1) -> int:
    """Say what failed on stderr; the exit code to end with."""
    print(f"{failure}: {error}", file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
