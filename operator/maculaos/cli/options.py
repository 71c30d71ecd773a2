"""Flags that several commands share, each group declared once (like kopf's shared option decorators),
the agent's flags made from its settings dataclass, and the registration of a command with the errors it
reports. Only argparse and the standard library at import time: every `maculaos` start builds the parser."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import itertools
import os
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]

Command = Callable[[argparse.Namespace], int]


def command(group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, func: Command, help: str,
            failure: str = "", reports: tuple[type[Exception], ...] = ()) -> argparse.ArgumentParser:
    """A subcommand that runs func. A MaculaosError it raises, and any exception of the types in reports,
    ends it with "<failure>: <message>" on stderr and the error's exit code (maculaos.cli.main); failure
    defaults to the command's own name (`maculaos backup list`)."""
    parser = group.add_parser(name, help=help)
    parser.set_defaults(func=func, failure=failure or parser.prog, reports=reports)
    return parser


def host_root(parser: argparse.ArgumentParser, default: str = "/") -> None:
    """--host-root: where the node's root filesystem is (/ on the node, /host in the agent's pod)."""
    parser.add_argument("--host-root", type=Path, default=Path(os.environ.get("HOST_ROOT", default)),
                        help=f"where the node's root filesystem is mounted (default: $HOST_ROOT or {default})")


def restic(parser: argparse.ArgumentParser) -> None:
    """--restic: the restic command."""
    parser.add_argument("--restic", default=os.environ.get("MACULAOS_RESTIC", "restic"),
                        help="restic command (default: $MACULAOS_RESTIC or restic)")


def logging_options(parser: argparse.ArgumentParser) -> None:
    """--log-format and --verbose: how a long-running process logs."""
    parser.add_argument("--log-format", choices=["json", "plain"], default="json")
    parser.add_argument("--verbose", action="store_true")


def check(parser: argparse.ArgumentParser) -> None:
    """--check: for commands that write generated files."""
    parser.add_argument("--check", action="store_true", help="fail if the files differ instead of writing")


def workdir(parser: argparse.ArgumentParser) -> None:
    """--workdir: the local environment's directory."""
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".demo")


def image_definition(parser: argparse.ArgumentParser, arch: bool = True) -> None:
    """--definition, --extend, --profiles (and --arch): which image a command is about."""
    parser.add_argument("--definition", type=Path, default=REPO_ROOT / "image-build" / "maculaos.yaml")
    parser.add_argument("--extend", type=Path, action="append", default=[], metavar="FILE",
                        help="a custom build's additions (packages, overlays, files, firstboot), repeatable")
    parser.add_argument("--profiles", default="", help="comma-separated package profiles instead of the "
                                                       "definition's `profiles`")
    if arch:
        parser.add_argument("--arch", default="", help="amd64 or arm64 instead of the definition's `arch` (a "
                                                       "foreign one is built under qemu-user-static)")


def settings_flags(parser: argparse.ArgumentParser, settings: type, names: Iterable[str], *,
                   defaults: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None) -> None:
    """One flag per named field of the settings dataclass: `--field-name`, parsed as the field's type
    (a bool is a switch), with the field's default (or defaults[name]; or the value of the environment
    variable env[name] when it is set) and the field's docstring as its help. A field left without a
    default is a required flag."""
    defaults, env = defaults or {}, env or {}
    types = typing.get_type_hints(settings)
    fields = {f.name: f for f in dataclasses.fields(settings)}
    docs = field_docs(settings)
    for name in names:
        kind, doc = types[name], docs.get(name, "")
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=doc)
            continue
        default: Any = defaults.get(name, fields[name].default)
        given = default is not dataclasses.MISSING
        if name in env:
            shown = f"${env[name]} or {default}" if given else f"${env[name]}"
            default = os.environ.get(env[name], default)
            given = default is not dataclasses.MISSING
        else:
            shown = str(default)
        help = f"{doc.removesuffix('.')} (default: {shown})." if shown else doc
        parser.add_argument(flag, type=kind, default=default if given else None,
                            required=not given, help=help)


@functools.cache
def field_docs(settings: type) -> dict[str, str]:
    """The docstrings of a dataclass's fields (the string right after each field), read from its source;
    empty when the source cannot be read."""
    try:
        source = Path(sys.modules[settings.__module__].__file__ or "").read_text()
    except OSError:
        return {}
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == settings.__name__)
    docs: dict[str, str] = {}
    for field, after in itertools.pairwise(cls.body):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[field.target.id] = " ".join(after.value.value.split())
    return docs
