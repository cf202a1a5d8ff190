"""Certificates and keys: the server's private CA and TLS certificate, the node's auth key.

Everything is generated in memory first and then written file by file atomically, private
keys with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path

from zk0cli.core.errors import bad_input
from zk0cli.core.files import atomic_write_bytes

SECRET_MODE = 0o600
CA_DAYS = 3650
SERVER_DAYS = 825
LOOPBACK_NAMES = ("127.0.0.1", "localhost")  # the SuperLink's own SuperExec connects here


@dataclass(frozen=True)
class ServerPki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def at(cls, pki_dir: Path) -> ServerPki:
        return cls(pki_dir / "ca.pem", pki_dir / "ca.key", pki_dir / "server.pem", pki_dir / "server.key")

    def files(self) -> tuple[Path, ...]:
        return (self.ca_cert, self.ca_key, self.server_cert, self.server_key)


@dataclass(frozen=True)
class NodePki:
    ca_cert: Path  # the federation's CA, pinned
    private_key: Path  # OpenSSH ECDSA P-384, what flower-supernode's auth takes
    public_key: Path

    @classmethod
    def at(cls, pki_dir: Path) -> NodePki:
        return cls(pki_dir / "ca.pem", pki_dir / "node_key", pki_dir / "node_key.pub")

    def files(self) -> tuple[Path, ...]:
        return (self.ca_cert, self.private_key, self.public_key)


def create_server_pki(pki_dir: Path, public_addresses: list[str], *, organisation: str = "zk0 federation") -> ServerPki:
    """A private CA and a server certificate valid for the public addresses and loopback."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, "zk0 federation CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    names = list(dict.fromkeys([*public_addresses, *LOOPBACK_NAMES]))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pki = ServerPki.at(pki_dir)
    pem = serialization.Encoding.PEM
    for key, path in ((ca_key, pki.ca_key), (server_key, pki.server_key)):
        private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        atomic_write_bytes(path, private, mode=SECRET_MODE)
    atomic_write_bytes(pki.ca_cert, ca_cert.public_bytes(pem))
    atomic_write_bytes(pki.server_cert, server_cert.public_bytes(pem))
    return pki


def create_node_key(pki_dir: Path) -> NodePki:
    """An ECDSA P-384 key pair in OpenSSH format for Flower's SuperNode authentication."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    pki = NodePki.at(pki_dir)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    atomic_write_bytes(pki.private_key, private, mode=SECRET_MODE)
    atomic_write_bytes(pki.public_key, public + b" zk0-node\n")
    return pki


def load_ca_certificate(path: Path):
    """Read a CA certificate given by a user, with a clear error for every way it can be wrong."""
    from cryptography import x509

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise bad_input(
            f"CA certificate {path} does not exist",
            hint="ask the server admin for ca.pem (`zk0 init --role server` printed where it is)",
        ) from None
    except IsADirectoryError:
        raise bad_input(f"CA certificate {path} is a directory", hint="pass the ca.pem file itself") from None
    except OSError as exc:
        raise bad_input(f"cannot read CA certificate {path}: {exc.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise bad_input(
            f"{path} is not a PEM certificate", hint="the file should start with -----BEGIN CERTIFICATE-----"
        ) from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise bad_input(
            f"{path} is not a CA certificate", hint="pass the federation's ca.pem, not the server's own certificate"
        )
    return cert


def store_ca_certificate(source: Path, pki_dir: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    cert = load_ca_certificate(source)
    target = NodePki.at(pki_dir).ca_cert
    atomic_write_bytes(target, cert.public_bytes(serialization.Encoding.PEM))
    return target


def fingerprint(cert_path: Path) -> str:
    """SHA-256 fingerprint of a certificate, as colon-separated hex (what operators compare)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def backup_existing(paths: tuple[Path, ...], backup_dir: Path) -> list[Path]:
    """Copy whichever of ``paths`` exist into ``backup_dir`` (kept with the same modes)."""
    moved = []
    for path in paths:
        if path.exists():
            backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            target = backup_dir / path.name
            shutil.copy2(path, target)
            moved.append(target)
    return moved


def _general_name(name: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
