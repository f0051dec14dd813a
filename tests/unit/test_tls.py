"""The installation's CA and the gateway's certificate (shared/tls.py)."""

from __future__ import annotations

import asyncio
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from shared import tls
from shared.settings import Settings


def settings_in(tmp_path, **more) -> Settings:
    return Settings(state_dir=tmp_path, **more)


def test_the_ca_key_and_the_gateway_key_are_readable_by_their_owner_alone(tmp_path):
    """Whatever the umask, the keys are 0600 and the folder 0700; the certificates are public."""
    import os
    old = os.umask(0)
    try:
        files = tls.ensure_installation_tls(settings_in(tmp_path))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "tls" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    assert stat.S_IMODE(files.ca.stat().st_mode) == 0o644


def test_the_gateway_certificate_names_every_address_and_chains_to_the_ca(tmp_path):
    """loopback, the migration address (as an IP and as text for iPXE), the host name and the
    setting's extra names; RSA 2048 keys; signed by the CA, which is a CA."""
    import socket
    settings = settings_in(tmp_path, gateway_tls_names="ferry.example, 192.0.2.7",
                           libvirt_migration_subnet="10.99.0.0/24")
    files = tls.ensure_installation_tls(settings)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    assert {"localhost", socket.gethostname(), "ferry.example", "10.99.0.1"} <= dns
    assert {"127.0.0.1", "10.99.0.1", "192.0.2.7"} <= ips
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (cert.public_key(), ca.public_key()):
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048


def test_making_them_again_changes_nothing_and_a_new_name_renews_the_certificate_only(tmp_path):
    first = tls.ensure_installation_tls(settings_in(tmp_path))
    ca, cert = first.ca.read_bytes(), first.cert.read_bytes()
    again = tls.ensure_installation_tls(settings_in(tmp_path))
    assert (again.ca.read_bytes(), again.cert.read_bytes()) == (ca, cert)
    renamed = tls.ensure_installation_tls(settings_in(tmp_path, gateway_tls_names="new.example"))
    assert renamed.ca.read_bytes() == ca
    assert renamed.cert.read_bytes() != cert
    assert "new.example" in tls.cert_names(
        x509.load_pem_x509_certificate(renamed.cert.read_bytes()))


def test_a_garbled_ca_is_an_error_naming_its_file(tmp_path):
    tls.ensure_installation_tls(settings_in(tmp_path))
    (tmp_path / "tls" / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(tls.TlsError, match=str(tmp_path / "tls" / "ca.pem")):
        tls.ensure_installation_tls(settings_in(tmp_path))


def test_the_default_is_https_and_plain_http_only_by_the_setting(tmp_path):
    assert Settings(state_dir=tmp_path).gateway_url.startswith("https://")
    assert tls.gateway_scheme(Settings(state_dir=tmp_path)) == "https"
    plain = Settings(state_dir=tmp_path, gateway_plain_http=True)
    assert plain.gateway_url.startswith("http://")
    assert (tls.gateway_scheme(plain), tls.served_files(plain), tls.trusted_ca(plain)) == \
        ("http", None, None)
    # a configured certificate wins over the plain-HTTP setting
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    configured = Settings(state_dir=tmp_path, gateway_plain_http=True,
                          gateway_tls_cert=cert, gateway_tls_key=key)
    assert tls.served_files(configured) == (cert, key)
    assert tls.trusted_ca(configured) == cert
    with pytest.raises(tls.TlsError, match="go together"):
        tls.served_files(Settings(state_dir=tmp_path, gateway_tls_cert=cert))


def test_a_client_trusting_the_ca_completes_a_handshake_with_the_gateway_context(tmp_path):
    """The server context made from the files and the client context made from the CA meet, on
    loopback; a client trusting another CA is refused."""
    settings = settings_in(tmp_path)
    cert, key = tls.served_files(settings)
    server = tls.server_context(cert, key)

    async def handshake(client: ssl.SSLContext) -> None:
        async def serve(reader, writer):
            writer.write(b"ok")
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
        port = srv.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            assert await reader.read() == b"ok"
            writer.close()
        finally:
            srv.close()

    asyncio.run(handshake(tls.client_context(settings)))
    other = settings_in(tmp_path / "other")
    tls.ensure_installation_tls(other)
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(handshake(tls.client_context(other)))


def test_the_server_offers_the_suites_ipxe_speaks_after_the_modern_ones(tmp_path):
    cert, key = tls.served_files(settings_in(tmp_path))
    names = [c["name"] for c in tls.server_context(cert, key).get_ciphers()]
    assert "AES128-SHA" in names and "AES256-SHA256" in names
    assert names.index("ECDHE-RSA-AES128-GCM-SHA256") < names.index("AES128-SHA")


def test_the_demo_warns_in_yellow_when_plain_http_is_allowed(tmp_path, monkeypatch):
    """The demo makes the CA before it starts anything; with FERRY_GATEWAY_PLAIN_HTTP it makes
    none and prints a bold yellow warning instead."""
    import io

    from rich.console import Console

    from cli import demo

    out = io.StringIO()
    monkeypatch.setattr(demo, "console", Console(file=out, force_terminal=True, width=200))
    demo._tls(Settings(state_dir=tmp_path / "tls-on"))
    assert (tmp_path / "tls-on" / "tls" / "ca.pem").exists()
    assert "serves HTTPS" in out.getvalue() and "WARNING" not in out.getvalue()
    out.truncate(0)
    demo._tls(Settings(state_dir=tmp_path / "plain", gateway_plain_http=True))
    assert not (tmp_path / "plain" / "tls").exists()
    assert "\x1b[1;33mWARNING: FERRY_GATEWAY_PLAIN_HTTP is set" in out.getvalue()


def test_the_libvirt_boot_url_carries_no_token_when_the_boot_listener_serves(tmp_path):
    """iPXE's boot URL names the boot listener and the VM's uuid only; without a boot listener
    it is the gateway's own route, whose ?token= is the SMBIOS serial."""
    from shared.providers.libvirt import boot_url

    settings = Settings(state_dir=tmp_path, gateway_port=8470, gateway_boot_port=8471)
    assert boot_url(settings, "10.215.0.1") == "http://10.215.0.1:8471/v1/boot/${uuid}"
    without = Settings(state_dir=tmp_path, gateway_boot_port=0, gateway_plain_http=True)
    assert boot_url(without, "10.215.0.1") == \
        "http://10.215.0.1:8470/v1/boot/${uuid}?token=${serial}"
