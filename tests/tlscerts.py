"""Throw-away certificates for the TLS tests: a CA, a server and two clients (one untrusted)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class TestCerts:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # signed by the CA, CN "test-client"
    client_key: Path
    rogue_cert: Path  # self-signed, CN "rogue"
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject, key, issuer, issuer_key, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        ).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert, key) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def make_certs(directory: Path) -> TestCerts:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("gnsq_server test CA")
    ca = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    ca_path, _ = _write(directory, "ca", ca, ca_key)

    def signed(name: str, common_name: str, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        return _write(directory, name, _issue(_name(common_name), key, ca_name, ca_key,
                                              server=server), key)

    server_cert, server_key = signed("server", "nsq-fixture", server=True)
    client_cert, client_key = signed("client", "test-client")
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_cert, rogue_key_path = _write(
        directory, "rogue", _issue(_name("rogue"), rogue_key, _name("rogue"), rogue_key),
        rogue_key,
    )
    return TestCerts(
        ca_path, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key_path
    )
