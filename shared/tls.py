"""The installation's CA and the gateway's certificate (docs/security.md, "TLS").

The CA is made once per installation, in state_dir/tls/, its key readable by Ferryman's user
alone; the gateway's certificate is signed by it and names every address VMs and operators
use. Clients (the CLI, the health check, simulated VMs, the migration image) trust that CA and
nothing else. RSA 2048 keys: iPXE speaks RSA only.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.settings import Settings

CA_DAYS = 3650
# Renewed by the set-up well before it ends (a certificate with less than RENEW_DAYS left, or
# one that no longer names every address, is made again).
GATEWAY_DAYS = 825
RENEW_DAYS = 30
# iPXE (2019) offers only TLS_RSA_WITH_AES_*_CBC_SHA(256): the modern suites first, those last.
GATEWAY_CIPHERS = ("ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:"
                   "AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA")


class TlsError(ValueError):
    """The installation's TLS files cannot be made or read (the message names the file)."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the gateway's certificate (PEM)
    key: Path  # the gateway's key (PEM)


def tls_dir(settings: Settings) -> Path:
    return settings.state_dir / "tls"


def installation_files(settings: Settings) -> TlsFiles:
    folder = tls_dir(settings)
    return TlsFiles(folder / "ca.pem", folder / "gateway.pem", folder / "gateway.key")


def gateway_names(settings: Settings) -> list[str]:
    """What the gateway's certificate names: loopback, this machine's name, the migration
    network's host address (as an IP and, for iPXE's textual check, as a DNS name too), and
    FERRY_GATEWAY_TLS_NAMES."""
    migration_host = str(next(ip_network(settings.libvirt_migration_subnet).hosts()))
    names = ["localhost", "127.0.0.1", socket.gethostname(), migration_host]
    names += [n.strip() for n in settings.gateway_tls_names.split(",") if n.strip()]
    return list(dict.fromkeys(names))


def ensure_installation_tls(settings: Settings) -> TlsFiles:
    """Make the CA (once) and the gateway's certificate (again when a name is missing or it
    nears its end). Idempotent; safe to call at every start."""
    files = installation_files(settings)
    folder = files.ca.parent
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    # Gateways starting at once (replicas, the demo's processes) make one CA, not two halves.
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure(files, settings)


def _ensure(files: TlsFiles, settings: Settings) -> TlsFiles:
    ca_key_path = files.ca.parent / "ca.key"
    if not (files.ca.exists() and ca_key_path.exists()):
        key = _new_key()
        _write_private(ca_key_path, _key_pem(key))
        _write_public(files.ca, _ca_certificate(key).public_bytes(serialization.Encoding.PEM))
    ca_key = _read_key(ca_key_path)
    ca_cert = _read_cert(files.ca)
    names = gateway_names(settings)
    if not _current(files, ca_cert, names):
        key = _new_key()
        _write_private(files.key, _key_pem(key))
        cert = _gateway_certificate(key, ca_key, ca_cert, names)
        _write_public(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


def ca_fingerprint(ca: Path) -> str:
    """The CA's SHA-256 fingerprint (hex): what a cache of things built to trust it is keyed by."""
    return _read_cert(ca).fingerprint(hashes.SHA256()).hex()


def cert_names(cert: x509.Certificate) -> list[str]:
    """A certificate's subject alternative names, as text."""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]


# --- which files a gateway serves and a client trusts -------------------------------------------

def gateway_scheme(settings: Settings) -> str:
    """How this installation's gateway is spoken to: https unless plain HTTP is allowed and no
    certificate is configured."""
    return "https" if trusted_ca(settings) else "http"


def served_files(settings: Settings) -> tuple[Path, Path] | None:
    """(certificate, key) the gateway serves: the configured ones, else the installation's
    (made if missing); None when plain HTTP is allowed and no certificate is configured."""
    cert, key = settings.gateway_tls_cert, settings.gateway_tls_key
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise TlsError("FERRY_GATEWAY_TLS_CERT and FERRY_GATEWAY_TLS_KEY go together")
        return cert, key
    if settings.gateway_plain_http:
        return None
    files = ensure_installation_tls(settings)
    return files.cert, files.key


def trusted_ca(settings: Settings) -> Path | None:
    """The file a client of this installation's gateway trusts: FERRY_GATEWAY_TLS_CERT when
    configured (a self-signed certificate, or a bundle with its chain), else the installation's
    CA; None over plain HTTP."""
    if settings.gateway_tls_cert is not None:
        return settings.gateway_tls_cert
    if settings.gateway_plain_http:
        return None
    return installation_files(settings).ca


def client_context(settings: Settings) -> ssl.SSLContext | None:
    """An SSL context trusting this installation's gateway only, or None over plain HTTP."""
    ca = trusted_ca(settings)
    return None if ca is None else ssl.create_default_context(cafile=str(ca))


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(GATEWAY_CIPHERS)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the gateway's certificate {cert} and key {key}: "
                       f"{exc}") from None
    return context


# --- making them --------------------------------------------------------------------------------

def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _ca_certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ferryman"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Ferryman CA {socket.gethostname()}"),
    ])
    now = _now()
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _san(name: str) -> list[x509.GeneralName]:
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return [x509.DNSName(name)]
    # An address is also a dNSName: iPXE compares the host of its URL with the names as text.
    return [x509.IPAddress(address), x509.DNSName(str(address))]


def _gateway_certificate(key: rsa.RSAPrivateKey, ca_key: rsa.RSAPrivateKey,
                         ca_cert: x509.Certificate, names: list[str]) -> x509.Certificate:
    now = _now()
    sans = [general for name in names for general in _san(name)]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=GATEWAY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _current(files: TlsFiles, ca_cert: x509.Certificate, names: list[str]) -> bool:
    """The gateway's certificate is there, signed by this CA, names every name, and has time."""
    if not (files.cert.exists() and files.key.exists()):
        return False
    cert = _read_cert(files.cert)
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # noqa: BLE001 - not this CA's signature, whatever the reason: make it again
        return False
    left = cert.not_valid_after_utc - _now()
    return left > datetime.timedelta(days=RENEW_DAYS) and set(names) <= set(cert_names(cert))


def _write_private(path: Path, data: bytes) -> None:
    """Mode 0600 from the start, whatever the umask; whole or not at all (rename)."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(partial, 0o600)
    os.replace(partial, path)


def _write_public(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.chmod(partial, 0o644)
    os.replace(partial, path)


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"{path} is not a readable PEM certificate: {exc}") from None


def _read_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TlsError(f"{path} is not a readable PEM key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TlsError(f"{path} is not an RSA key (iPXE speaks RSA only)")
    return key
