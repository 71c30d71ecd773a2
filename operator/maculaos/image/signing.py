"""Who signs a build: the key and certificate that sign the RAUC bundle and SHA256SUMS, and the keyring
the image trusts (/etc/rauc/keyring.pem). A build input (`--signing-key/--signing-cert`); without one a
throwaway development CA is made in the build cache, and the image and the summary say so."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from maculaos.errors import MaculaosError

DEVELOPMENT_SUBJECT = "/O=MaculaOS development (throwaway, not for production)/CN=maculaos-dev-ca"


class SigningError(MaculaosError):
    """The signing inputs cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class SigningIdentity:
    key: Path
    cert: Path
    keyring: Path
    """The CA certificate(s) a node checks bundles against (the signing certificate itself by default)."""
    development: bool

    def fingerprint(self) -> str:
        """sha256 of the keyring's certificate (DER), as `openssl x509 -fingerprint -sha256` prints it."""
        der = _openssl_bytes("x509", "-in", str(self.keyring), "-outform", "DER")
        return hashlib.sha256(der).hexdigest()

    def describe(self) -> str:
        """One line for build-info and the build summary."""
        fp = self.fingerprint()[:16]
        if self.development:
            return (f"development CA (throwaway, made in the build cache; not for production nodes) "
                    f"sha256:{fp}")
        subject = _openssl("x509", "-in", str(self.keyring), "-noout", "-subject").strip()
        return f"{subject.removeprefix('subject=').strip()} sha256:{fp}"


def _openssl_bytes(*args: str) -> bytes:
    result = subprocess.run(["openssl", *args], capture_output=True, check=False)
    if result.returncode != 0:
        raise SigningError(f"openssl {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def _openssl(*args: str) -> str:
    return _openssl_bytes(*args).decode()


def development_identity(cache: Path) -> SigningIdentity:
    """The build cache's development CA, made once (self-signed: it signs and is the keyring)."""
    directory = cache / "dev-ca"
    key, cert = directory / "dev-ca.key.pem", directory / "dev-ca.cert.pem"
    if not (key.exists() and cert.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        _openssl("req", "-x509", "-newkey", "rsa:3072", "-nodes", "-sha256", "-days", "3650",
                 "-subj", DEVELOPMENT_SUBJECT, "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,digitalSignature",
                 "-keyout", str(key), "-out", str(cert))
    return SigningIdentity(key, cert, cert, development=True)


def given_identity(key: Path, cert: Path, keyring: Path | None = None) -> SigningIdentity:
    """A release signing key and certificate; checked now so a typo fails before a 10-minute build."""
    for name, path in (("--signing-key", key), ("--signing-cert", cert), ("--keyring", keyring)):
        if path is not None and not path.is_file():
            raise SigningError(f"{name}: {path} is not a file")
    _openssl("x509", "-in", str(cert), "-noout")
    cert_key = _openssl("x509", "-in", str(cert), "-noout", "-pubkey")
    own_key = _openssl("pkey", "-in", str(key), "-pubout")
    if cert_key != own_key:
        raise SigningError(f"--signing-key {key} is not the key of --signing-cert {cert}")
    return SigningIdentity(key, cert, keyring or cert, development=False)


def sign_file(identity: SigningIdentity, path: Path) -> Path:
    """A detached signature, `path`.sig (sha256, the key's own scheme); checked with
    `openssl dgst -sha256 -verify <(openssl x509 -pubkey -noout -in cert) -signature path.sig path`."""
    sig = path.with_name(path.name + ".sig")
    _openssl("dgst", "-sha256", "-sign", str(identity.key), "-out", str(sig), str(path))
    return sig
