"""TLS certificates for the coordinator, the federation's signing key, and authentication keys for
nodes (``cryptography``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from lab.registry.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE

__all__ = ["CoordinatorCerts", "NodeKeys", "enroll_node", "init_coordinator", "make_federation_key"]


@dataclass(frozen=True)
class CoordinatorCerts:
    """The federation's CA certificate (nodes trust it) and the SuperLink's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeys:
    """A node's authentication key pair, OpenSSH format; the SuperLink registers the public key."""

    private_key: Path
    public_key: Path


def _write(path: Path, data: bytes, *, secret: bool = False) -> Path:
    """Write ``data`` to ``path``; a secret readable by its owner only from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if secret:
        path.touch(mode=0o600)
        path.chmod(0o600)
    path.write_bytes(data)
    return path


def init_coordinator(
    folder: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 365
) -> CoordinatorCerts:
    """Create a CA and a SuperLink certificate valid for ``hosts``, in ``folder``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlab federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    _write(folder / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain), secret=True)
    return CoordinatorCerts(
        ca_cert=_write(folder / "ca.crt", ca_cert.public_bytes(pem)),
        server_cert=_write(folder / "server.pem", server_cert.public_bytes(pem)),
        server_key=_write(
            folder / "server.key", server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain), secret=True
        ),
    )


def enroll_node(folder: Path, name: str) -> NodeKeys:
    """Create a node's EC key pair in OpenSSH format, in ``folder``."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return NodeKeys(
        private_key=_write(folder / f"{name}.key", private, secret=True),
        public_key=_write(folder / f"{name}.pub", public + f" {name}\n".encode()),
    )


def make_federation_key(folder: Path) -> Path:
    """The federation's Ed25519 signing key in ``folder`` (``federation.key``, readable by its owner
    only, and ``federation.pub`` for members: lab.registry.signing), made if missing; the public
    key's path."""
    private, public = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    if not private.is_file():
        key = Ed25519PrivateKey.generate()
        pem = serialization.Encoding.PEM
        _write(
            private,
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            secret=True,
        )
        _write(public, key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    private.chmod(0o600)
    return public
