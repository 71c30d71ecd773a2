"""The certificates a private test control plane needs: one CA, the API server's serving certificate (for
loopback and the address nodes use), client certificates (an admin in system:masters, the scheduler, the
controller manager, and the API server's own to kubelets), and the service-account signing key."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_VALIDITY = dt.timedelta(days=365)
#: The group of the API server's client certificate to kubelets; the control plane binds it to
#: system:kubelet-api-admin (logs, exec, port-forward on nodes), as kubeadm does for its own group.
KUBELET_CLIENT_GROUP = "maculaos:kubelet-api-admins"
#: Client certificates besides the admin's: file stem -> (common name, organization). The scheduler and the
#: controller manager get the identities the API server's default RBAC already grants their rights.
CLIENTS: dict[str, tuple[str, str | None]] = {
    "scheduler": ("system:kube-scheduler", None),
    "controller-manager": ("system:kube-controller-manager", None),
    "kubelet-client": ("kube-apiserver-kubelet-client", KUBELET_CLIENT_GROUP),
}


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files under one directory."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"

    def client_cert(self, stem: str) -> Path:
        """The certificate of one of CLIENTS."""
        return self.directory / f"{stem}.crt"

    def client_key(self, stem: str) -> Path:
        return self.directory / f"{stem}.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_public_key(self) -> Path:
        return self.directory / "sa.pub"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             ca_key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    """With key identifiers: Python 3.13's strict verification (the image's python, e.g. `maculaos
    pod-network` on a node) refuses a certificate without an Authority Key Identifier."""
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))


def _client(pki: Pki, stem: str, subject: x509.Name, issuer: x509.Name, ca_key: ec.EllipticCurvePrivateKey) -> None:
    key = _new_key()
    cert = (_builder(subject, issuer, key, ca_key)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(pki.client_key(stem), key)
    pki.client_cert(stem).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def create_pki(directory: Path, addresses: tuple[str, ...] = ()) -> Pki:
    """Write a fresh CA and the certificates signed by it; returns their paths. The serving certificate names
    127.0.0.1, the service IP 10.0.0.1 and addresses (where nodes reach the API server)."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    ca_key = _new_key()
    ca_name = _name("maculaos-dev-ca")
    ca_cert = (_builder(ca_name, ca_name, ca_key, ca_key)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    _write_key(pki.ca_key, ca_key)
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    serving_key = _new_key()
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in (
        "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(
        ("127.0.0.1", "10.0.0.1", *addresses))]
    serving = (_builder(_name("kube-apiserver"), ca_name, serving_key, ca_key)
               .add_extension(x509.SubjectAlternativeName(names), critical=False)
               .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .sign(ca_key, hashes.SHA256()))
    _write_key(pki.serving_key, serving_key)
    pki.serving_cert.write_bytes(serving.public_bytes(serialization.Encoding.PEM))

    _client(pki, "admin", _name("maculaos-admin", "system:masters"), ca_name, ca_key)
    for stem, (common_name, organization) in CLIENTS.items():
        _client(pki, stem, _name(common_name, organization), ca_name, ca_key)

    sa_key = _new_key()
    _write_key(pki.service_account_key, sa_key)
    pki.service_account_public_key.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki
