"""Test TLS material made on the spot: a CA, a broker certificate for 127.0.0.1 signed by it, Java stores."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

STORE = ("-storetype", "PKCS12", "-storepass")


@dataclass(frozen=True)
class BrokerTLS:
    ca_pem: Path
    keystore: Path
    truststore: Path
    password: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_broker_tls(folder: Path, password: str) -> BrokerTLS:
    """A CA and a broker certificate (SAN 127.0.0.1, localhost) in a PKCS12 keystore; the CA in a PKCS12 truststore
    (imported with ``keytool``: Java only trusts certificate entries carrying its own PKCS12 attribute)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("livestream test CA"))
        .issuer_name(_name("livestream test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = folder / "ca.pem"
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    keystore = folder / "broker.p12"
    keystore.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"broker", key, cert, [ca_cert], serialization.BestAvailableEncryption(password.encode())
        )
    )
    truststore = folder / "truststore.p12"
    keytool = shutil.which("keytool")
    assert keytool, "keytool (Java) is needed for the broker's truststore; deploy/local/kafka.sh fetch installs Java"
    subprocess.run(
        [
            keytool,
            "-importcert",
            "-noprompt",
            "-alias",
            "ca",
            "-file",
            str(ca_pem),
            "-keystore",
            str(truststore),
            *STORE,
            password,
        ],
        check=True,
        capture_output=True,
    )
    for path in (keystore, truststore):
        path.chmod(0o600)
    return BrokerTLS(ca_pem, keystore, truststore, password)
