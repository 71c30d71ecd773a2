"""Pairing a node with the Macula Portal: a code the person got from the Portal is exchanged for the
node's credentials (`POST <portal>/api/console/pair`), kept root-only in
/var/lib/maculaos/credentials/portal.json.

The Portal makes a code single-use and short-lived; the node only says clearly why an exchange failed
(expired, used, unknown, the Portal unreachable or answering garbage) and keeps nothing then. The code and
the refresh token never reach a log or an error message."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from maculaos.errors import MaculaosError
from maculaos.host.files import atomic_write

CREDENTIALS = Path("var/lib/maculaos/credentials/portal.json")
PAIR_PATH = "/api/console/pair"
#: A Portal code as people type it: letters, digits and dashes.
CODE = re.compile(r"^[A-Za-z0-9-]{4,64}$")


class PairingFailure(StrEnum):
    INVALID = "invalid"
    EXPIRED = "expired"
    USED = "used"
    UNKNOWN = "unknown"
    UNREACHABLE = "unreachable"
    GARBAGE = "garbage"


MESSAGES = {
    PairingFailure.INVALID: "the Portal code is not in the Portal's form (letters, digits and dashes): "
                            "type it as the Portal shows it",
    PairingFailure.EXPIRED: "the Portal code has expired: make a new one in the Portal and enter it",
    PairingFailure.USED: "the Portal code was already used: each code pairs one node; make a new one",
    PairingFailure.UNKNOWN: "the Portal does not know this code: check it, or make a new one in the Portal",
    PairingFailure.UNREACHABLE: "the Portal cannot be reached from this node",
    PairingFailure.GARBAGE: "the Portal's answer is not a pairing answer",
}


class PairingError(MaculaosError):
    """The exchange failed; `failure` says why, the message what to do. Nothing was stored."""

    def __init__(self, failure: PairingFailure, detail: str = "") -> None:
        super().__init__(MESSAGES[failure] + (f" ({detail})" if detail else ""))
        self.failure = failure


class PortalCredentials(BaseModel):
    """What the Portal gives a paired node (and what portal.json holds)."""

    model_config = ConfigDict(extra="ignore")

    refresh_token: str = Field(min_length=16, max_length=4096, repr=False)
    """The node's long-lived Portal credential."""
    user_name: str = Field(min_length=1, max_length=256)
    """Who paired the node."""
    org_id: str = Field(min_length=1, max_length=256)
    """The organisation the node now belongs to."""
    org_name: str = Field(default="", max_length=256)
    """The organisation's display name."""


def _error_code(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return ""
    return str(answer.get("error", "")) if isinstance(answer, dict) else ""


def pair(portal_url: str, code: str, node_name: str, timeout: float = 15.0) -> PortalCredentials:
    """Exchange a Portal code for the node's credentials; PairingError says why not."""
    code = code.strip()
    if not CODE.fullmatch(code):
        raise PairingError(PairingFailure.INVALID)
    request = urllib.request.Request(
        portal_url.rstrip("/") + PAIR_PATH, method="POST",
        data=json.dumps({"code": code, "node": node_name}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (a configured URL)
            body = response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        failure = {"expired": PairingFailure.EXPIRED, "used": PairingFailure.USED,
                   "unknown": PairingFailure.UNKNOWN}.get(_error_code(exc.read(1 << 16)))
        if failure is None:
            raise PairingError(PairingFailure.GARBAGE, f"HTTP {exc.code}") from None
        raise PairingError(failure) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PairingError(PairingFailure.UNREACHABLE, f"{portal_url}: {reason}") from None
    try:
        return PortalCredentials.model_validate_json(body)
    except ValidationError:
        raise PairingError(PairingFailure.GARBAGE, "expected refresh_token, user_name and org_id") from None


def store_credentials(host_root: Path, credentials: PortalCredentials) -> Path:
    """portal.json, 0600 in a 0700 folder."""
    path = host_root / CREDENTIALS
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    atomic_write(path, credentials.model_dump_json(indent=2) + "\n", mode=0o600)
    return path
