"""`maculaos diag --full`'s support bundle: one tar.gz a person can attach to a report, holding the check
lines, the journal, config.yaml with every secret removed, the slot states and the agent's state files.
Secrets are removed twice: by key in config.yaml (tokens, passwords, keys), and by value from every file
of the bundle (a token the journal happened to log is cut out too)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from maculaos.host.config import HostConfigError, config_file, read_config
from maculaos.host.diag import Check
from maculaos.host.rauc import Rauc, RaucError

REMOVED = "<removed>"
#: config.yaml keys whose values are secret (or private): tokens, passwords and their hashes, keys.
SECRET_KEY = re.compile(r"token|passw|secret|htpasswd|private|credential|(^|_)keys?$|access_key", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@", re.IGNORECASE)
#: Files of the agent's and the upgrade's state, as they are on the node (relative to the host root).
STATE_FILES = (Path("var/lib/maculaos/upgrade/state.json"), Path("var/lib/maculaos/agent/firewall.nft"),
               Path("run/maculaos/node-info"), Path("var/lib/maculaos/hostname"))
JOURNAL_SECONDS = 30.0
JOURNAL_LINES = 20000


def redact(value: Any, secrets: set[str], secret: bool = False) -> Any:
    """value with every secret replaced by REMOVED; the removed strings are added to secrets."""
    if isinstance(value, dict):
        return {k: redact(v, secrets, secret or bool(SECRET_KEY.search(str(k)))) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets, secret) for v in value]
    if secret and value is not None and not isinstance(value, bool):
        secrets.add(str(value))
        return REMOVED
    if isinstance(value, str):
        secrets.update(m.group("userinfo") for m in URL_CREDENTIALS.finditer(value))
        return URL_CREDENTIALS.sub(rf"\g<scheme>{REMOVED}@", value)
    return value


def scrub(text: str, secrets: Iterable[str]) -> str:
    """text with every known secret value cut out (longest first: one may contain another); each
    password of a user:password pair too."""
    values = {s for s in secrets if len(s) >= 4} | {s.split(":", 1)[1] for s in secrets if ":" in s}
    for value in sorted((v for v in values if len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, REMOVED)
    return text


def redacted_config(host_root: Path, secrets: set[str]) -> str:
    path = config_file(host_root)
    if not path.exists():
        return f"# {path} is missing\n"
    try:
        raw = read_config(host_root)
    except HostConfigError as exc:  # the raw text may hold secrets we cannot find by key: left out
        return f"# {path} left out: it does not parse ({exc})\n"
    return yaml.safe_dump(redact(raw, secrets), sort_keys=False)


def journal(host_root: Path) -> str:
    """The current boot's journal (the node's own journal files when the host root is not /)."""
    where = [] if host_root.resolve() == Path("/") else ["--directory", str(host_root / "var/log/journal")]
    try:
        result = subprocess.run(["journalctl", *where, *([] if where else ["-b"]), "--no-pager", "-o", "short-iso",
                                 "-n", str(JOURNAL_LINES)], capture_output=True, text=True, timeout=JOURNAL_SECONDS)
    except FileNotFoundError:
        return "journalctl is not installed\n"
    except subprocess.TimeoutExpired:
        return f"journalctl gave no answer within {JOURNAL_SECONDS:g} s\n"
    return result.stdout + (f"\njournalctl: {result.stderr.strip()}\n" if result.returncode else "")


def slot_status(rauc: Rauc, seconds: float) -> str:
    try:
        return json.dumps(dataclasses.asdict(rauc.status(timeout=seconds)), indent=1) + "\n"
    except RaucError as exc:
        return f"unavailable: {exc}\n"


def collect(host_root: Path, checks: list[Check], rauc: Rauc, seconds: float) -> dict[str, str]:
    """The bundle's files by name, secrets removed."""
    secrets: set[str] = set()
    files = {"config.yaml": redacted_config(host_root, secrets),
             "diag.txt": "".join(f"{c.line()}\n" for c in checks),
             "slots.json": slot_status(rauc, seconds),
             "journal.txt": journal(host_root)}
    for state in STATE_FILES:
        path = host_root / state
        if path.is_file():
            files[f"state/{state.as_posix()}"] = path.read_text(errors="replace")
    return {name: scrub(text, secrets) for name, text in files.items()}


def write_bundle(host_root: Path, output_dir: Path, checks: list[Check], rauc: Rauc, seconds: float) -> Path:
    """Write the support bundle (mode 0600: logs may still say more than they should) and return its path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"maculaos-support-{socket.gethostname()}-{stamp}.tar.gz"
    prefix = path.name.removesuffix(".tar.gz")
    with path.open("xb") as out:
        path.chmod(0o600)
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            for name, text in collect(host_root, checks, rauc, seconds).items():
                data = text.encode()
                info = tarfile.TarInfo(f"{prefix}/{name}")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
                tar.addfile(info, io.BytesIO(data))
    return path
