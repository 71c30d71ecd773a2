"""First-boot mode's state on the data partition: the flag that ends it, the node's setup secret and the
wizard's self-signed TLS certificate.

The setup secret proves physical presence: it is shown only on the node's console (and in the console's
QR code), so whoever types it or scans it stands at the box. It is made once and kept root-only, so a
reboot shows the same one. The certificate is made with openssl once per node; its SHA-256 fingerprint
travels in the console's QR code, so a phone can pin the node it talks to."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from maculaos.errors import MaculaosError
from maculaos.host.config import CONFIG_PATH
from maculaos.host.files import atomic_write

STATE = Path("var/lib/maculaos")
CONFIGURED = STATE / ".configured"
SETUP_DIR = STATE / "setup"
SECRET = SETUP_DIR / "secret"
CERTIFICATE = SETUP_DIR / "wizard.crt"
KEY = SETUP_DIR / "wizard.key"
#: The secret's alphabet: base32 without the letters people confuse (no 0/O, 1/I/L): typed from a screen.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
SECRET_LENGTH = 16  # ~79 bits


class FirstBootError(MaculaosError):
    """First-boot state cannot be made (no openssl, an unwritable data partition); says which."""


def is_configured(host_root: Path) -> bool:
    return (host_root / CONFIGURED).exists()


def in_first_boot_mode(host_root: Path) -> bool:
    """The wizard serves, and the firewall keeps its ports open: the node is not configured, and either
    has no config.yaml yet or the wizard began writing it (its setup secret exists). A node provisioned
    with a config.yaml (the installer, cloud-init style) never enters it; a wizard left half-way, then
    rebooted, carries on. maculaos-wizard.service's ExecCondition is the same test in sh."""
    if is_configured(host_root):
        return False
    return not (host_root / CONFIG_PATH).exists() or (host_root / SECRET).exists()


def mark_configured(host_root: Path) -> None:
    """Set the flag: the wizard does not start again (a factory reset wipes it with the data partition)."""
    atomic_write(host_root / CONFIGURED, "configured by the first-boot wizard\n", mode=0o644)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def setup_secret(host_root: Path) -> str:
    """The node's setup secret, made on first use and kept 0600 in a 0700 folder."""
    path = host_root / SECRET
    try:
        kept = path.read_text().strip()
    except OSError:
        kept = ""
    if re.fullmatch(f"[{ALPHABET}]{{{SECRET_LENGTH}}}", kept):
        return kept
    _private_dir(path.parent)
    made = "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LENGTH))
    atomic_write(path, made + "\n", mode=0o600)
    return made


def short_code(secret: str) -> str:
    """The secret as people type it: four groups of four (ABCD-EFGH-JKMN-PQRS)."""
    return "-".join(secret[i:i + 4] for i in range(0, len(secret), 4))


def secret_matches(secret: str, typed: str) -> bool:
    """Whether what a person typed or scanned is the secret: case, spaces and dashes do not matter."""
    cleaned = re.sub(r"[\s-]", "", typed).upper()
    return hmac.compare_digest(cleaned.encode(), secret.encode())


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    fingerprint: str
    """SHA-256 of the certificate's DER form, hex."""


def fingerprint(pem: str) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as `openssl x509 -fingerprint -sha256` shows it
    (without colons, lowercase)."""
    body = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    return hashlib.sha256(base64.b64decode(body)).hexdigest()


def ensure_certificate(host_root: Path, name: str, openssl: str = "openssl") -> Certificate:
    """The wizard's certificate for name (and name.local), made once with openssl (EC P-256, 10 years:
    nobody renews a first-boot certificate)."""
    cert, key = host_root / CERTIFICATE, host_root / KEY
    if not (cert.exists() and key.exists()):
        _private_dir(cert.parent)
        try:
            subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-days", "3650", "-subj", f"/CN={name}",
                            "-addext", f"subjectAltName=DNS:{name},DNS:{name}.local",
                            "-keyout", str(key), "-out", str(cert)],
                           check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise FirstBootError(f"cannot make the wizard's TLS certificate with {openssl}: {detail}") from exc
        os.chmod(key, 0o600)
    return Certificate(cert, key, fingerprint(cert.read_text()))
