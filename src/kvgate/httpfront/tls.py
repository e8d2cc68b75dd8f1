"""Server TLS material for kvgate's listeners: key pairs (loaded, or self-signed) and HTTPS contexts.

Shared by ``kvgate epp`` (its ext_proc port and ``--metrics-tls``) and ``kvgate serve`` (``--admin-tls``):
a real deployment passes a certificate (``--cert-path DIR`` with ``tls.crt``/``tls.key``, the layout of a
Kubernetes TLS Secret, or ``--cert``/``--key``) and may require client certificates (``--client-ca``).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True, frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def self_signed(hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), *, days: int = 365) -> KeyPair:
    """A fresh P-256 certificate valid for ``hosts`` (DNS names or IPs), also usable as its own CA."""
    try:
        return _self_signed_cryptography(hosts, days)
    except ImportError:  # the openssl binary is a fallback where `cryptography` is not installed
        return _self_signed_openssl(hosts, days)


def _self_signed_cryptography(hosts: tuple[str, ...], days: int) -> KeyPair:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvgate"),
        ]
    )
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _self_signed_openssl(hosts: tuple[str, ...], days: int) -> KeyPair:
    san = ",".join((f"IP:{h}" if _is_ip(h) else f"DNS:{h}") for h in hosts)
    with tempfile.TemporaryDirectory() as d:
        key, crt = Path(d, "tls.key"), Path(d, "tls.crt")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(crt), "-days", str(days), "-subj", f"/CN={hosts[0]}/O=kvgate",
             "-addext", f"subjectAltName={san}", "-addext", "basicConstraints=critical,CA:TRUE"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        return KeyPair(cert_pem=crt.read_bytes(), key_pem=key.read_bytes())


def _is_ip(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
    except ValueError:
        return False
    return True


def load(cert_path: str | None, cert: str | None, key: str | None) -> KeyPair:
    if cert_path:
        return KeyPair(Path(cert_path, "tls.crt").read_bytes(), Path(cert_path, "tls.key").read_bytes())
    if cert and key:
        return KeyPair(Path(cert).read_bytes(), Path(key).read_bytes())
    raise ValueError("a certificate needs both --cert and --key (or --cert-path DIR)")


def https_context(pair: KeyPair, client_ca: bytes | None = None) -> ssl.SSLContext:
    """Server-side TLS for the metrics port (``--metrics-tls``): the ext_proc pair, client certificates
    required when ``client_ca`` is given (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as d:  # the ssl module loads keys from files only
        cert, key = Path(d) / "tls.crt", Path(d) / "tls.key"
        cert.write_bytes(pair.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(pair.key_pem)
        ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.load_verify_locations(cadata=client_ca.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
