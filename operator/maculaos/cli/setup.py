"""First boot and the LAN: `maculaos setup` (the text wizard), `maculaos wizard serve|console` (the web
wizard and what the console shows), `maculaos discover` (MaculaOS nodes nearby). Imports stay inside the
commands: every `maculaos` start builds the parser."""

from __future__ import annotations

import argparse
import os
import sys

from maculaos.cli import options

PORTAL_ENV = "MACULAOS_PORTAL_URL"
DEFAULT_PORTAL = "https://portal.macula.io"


def _portal_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--portal-url", default=os.environ.get(PORTAL_ENV, DEFAULT_PORTAL),
                        help=f"the Macula Portal (default: ${PORTAL_ENV} or {DEFAULT_PORTAL})")


def _setup(args: argparse.Namespace) -> int:
    from maculaos.host.firstboot import is_configured
    from maculaos.host.hostname import choose
    from maculaos.wizard.text import run_text_wizard
    if is_configured(args.host_root) and not args.again:
        print("this node is configured already (--again to change its settings and pair again)")
        return 0
    name = choose(args.host_root).name
    try:
        return 0 if run_text_wizard(args.host_root, name, args.portal_url) else 1
    except (EOFError, KeyboardInterrupt):
        print("\nsetup stopped: what was saved stays in config.yaml; the node is not paired", file=sys.stderr)
        return 1


def _serve_settings(args: argparse.Namespace) -> object:
    from maculaos.wizard.server import ServeSettings
    return ServeSettings(host_root=args.host_root, portal_url=args.portal_url, bind=args.bind,
                         tls_port=args.port, http_port=args.http_port, address=args.address)


def _wizard_serve(args: argparse.Namespace) -> int:
    from maculaos.wizard.server import ServeSettings, serve
    settings = _serve_settings(args)
    assert isinstance(settings, ServeSettings)
    if not serve(settings):
        print("this node is configured (or was provisioned with a config.yaml): no wizard served")
    return 0


def _wizard_console(args: argparse.Namespace) -> int:
    from maculaos.host.firstboot import in_first_boot_mode
    from maculaos.wizard.pairing import console_text
    from maculaos.wizard.server import ServeSettings, node_setup
    settings = _serve_settings(args)
    assert isinstance(settings, ServeSettings)
    if not in_first_boot_mode(args.host_root):
        return 0
    setup, _ = node_setup(settings)
    sys.stdout.write(console_text(setup))
    return 0


def _discover(args: argparse.Namespace) -> int:
    from maculaos.host.discover import discover
    found = discover(args.timeout)
    print(f"{'NODE':<20} {'ADDRESS':<18} {'VERSION':<12} {'ROLES':<22} REALM")
    for node in found:
        print(node.line())
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    setup = options.command(commands, "setup", _setup, "set up this node at its keyboard: the first-boot "
                            "wizard's steps, then pairing with the Macula Portal", reports=(OSError,))
    setup.add_argument("--again", action="store_true", help="run on a configured node too")
    options.host_root(setup)
    _portal_url(setup)

    wizard = commands.add_parser("wizard", help="the first-boot web wizard").add_subparsers(dest="action",
                                                                                           required=True)
    for name, func, text in (("serve", _wizard_serve, "serve the wizard (HTTPS; port 80 redirects) until the "
                                                      "node is paired; nothing on a configured node"),
                             ("console", _wizard_console, "print what the console shows in first-boot mode: "
                                                          "URL, setup code and QR code")):
        sub = options.command(wizard, name, func, text, reports=(OSError,))
        options.host_root(sub)
        _portal_url(sub)
        sub.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: every one)")
        sub.add_argument("--port", type=int, default=443, help="the HTTPS port (default 443)")
        sub.add_argument("--http-port", type=int, default=80, help="the redirecting port (default 80; 0: none)")
        sub.add_argument("--address", default="", help="the address the URL shows (default: <name>.local)")

    found = options.command(commands, "discover", _discover, "list the MaculaOS nodes on this LAN (mDNS "
                            "_macula._tcp)", reports=(OSError,))
    found.add_argument("--timeout", type=float, default=5.0, help="seconds to listen (default 5)")
