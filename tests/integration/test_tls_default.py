"""TLS by default (docs/security.md, "TLS"): the gateway serves HTTPS with the installation's
own CA and certificate unless FERRY_GATEWAY_PLAIN_HTTP says otherwise; the VM side is refused
over plain HTTP; the boot listener serves iPXE's boot chain and never a token."""

from __future__ import annotations

import asyncio
import logging
import stat
import subprocess
import uuid

import aiohttp
import pytest
from aiohttp import web

from cli.client import Gateway
from services.gateway.boot import boot_app
from services.healthcheck import ask, readyz_url
from shared import tls
from shared.providers.base import BootSource
from shared.providers.libvirt import boot_url
from tests.conftest import free_port
from tests.integration.harness import THREE_VMS, Ferry, start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


@pytest.fixture
def settings(settings):
    """The product's default: HTTPS, the installation's CA in the test's state dir."""
    return settings.model_copy(update={
        "gateway_plain_http": False, "gateway_url": f"https://127.0.0.1:{settings.gateway_port}"})


@pytest.fixture
async def ferry(settings, operator):
    ferry = await start_ferry(settings, operator)
    yield ferry
    await ferry.host.stop()


async def booted_vm(ferry: Ferry) -> uuid.UUID:
    group_id = await ferry.submit(THREE_VMS.format(group="shop"))
    vm_id = (await ferry.vm_ids(group_id))["app1"]
    await ferry.wait_booted(vm_id, BootSource.NETWORK)
    return vm_id


async def test_the_gateway_serves_https_by_default_and_its_clients_trust_the_ca(ferry: Ferry):
    """No certificate configured: the gateway made the CA (its key 0600) and its certificate,
    serves HTTPS, and the CLI and the health check are answered trusting that CA alone."""
    settings = ferry.settings
    ca_key = settings.state_dir / "tls" / "ca.key"
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    cli = Gateway.from_settings(settings)
    assert cli.url.startswith("https://") and cli.cafile == str(settings.state_dir / "tls/ca.pem")
    groups = await asyncio.to_thread(cli.call, "GET", "/v1/groups")
    assert groups["total"] == 0
    url = readyz_url("gateway", settings)
    assert url.startswith("https://")
    ready, said = await asyncio.to_thread(ask, url)
    assert ready, said


async def test_a_plain_http_script_fetch_is_refused(ferry: Ferry, tmp_path, caplog, capfd):
    """A VM's script over HTTPS, trusting the CA, with the token in curl's config file: 200.
    The same request over plain HTTP gets no answer at all; the token is in no log line."""
    caplog.set_level(logging.DEBUG)
    vm_id = await booted_vm(ferry)
    token = ferry.token(vm_id)
    ca = ferry.settings.state_dir / "tls" / "ca.pem"
    config = tmp_path / "curl.conf"
    config.write_text(f'header = "Authorization: Bearer {token}"\ncacert = "{ca}"\n')
    port = ferry.settings.gateway_port
    path = f"/v1/vms/{vm_id}/script"

    def curl(url: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "-f", "--max-time", "20", "-K", str(config), url],
                              capture_output=True, text=True)

    served = await asyncio.to_thread(curl, f"https://127.0.0.1:{port}{path}")
    assert served.returncode == 0, served.stderr
    assert served.stdout.startswith("#!/bin/bash")
    refused = await asyncio.to_thread(curl, f"http://127.0.0.1:{port}{path}")
    assert refused.returncode != 0 and refused.stdout == ""
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.get(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"}) as answer:
                await answer.read()
    # The old boot route with its ?token=, over HTTPS: answered, and still in no log line.
    async with ferry.vm(vm_id) as vm:
        assert vm._session is not None
        async with vm._session.get(f"{ferry.settings.gateway_url}/v1/boot/{vm_id}",
                                   params={"token": token}) as answer:
            assert answer.status == 200
    out, err = capfd.readouterr()
    assert token not in caplog.text and token not in out and token not in err


async def test_the_boot_listener_serves_the_boot_chain_and_the_ca_but_no_token(settings,
                                                                               tmp_path):
    """What iPXE gets over plain HTTP: a script whose URLs and kernel command line hold no
    token (the image reads it from the SMBIOS serial) and name the gateway's HTTPS URL; the
    image's files; the CA as an initrd the kernel unpacks (checked with cpio); nothing else."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "migration-vmlinuz").write_bytes(b"kernel")
    (images / "migration-initrd.img").write_bytes(b"initrd")
    (images / "base-image.tar.zst").write_bytes(b"not for the boot listener")
    settings = settings.model_copy(update={"lab_images": images})
    files = tls.ensure_installation_tls(settings)
    assert "token" not in boot_url(settings.model_copy(update={"gateway_boot_port": 8471}),
                                   "10.215.0.1")
    runner = web.AppRunner(boot_app(settings), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    vm_id = uuid.uuid4()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get(f"/v1/boot/{vm_id}") as answer:
                script = await answer.text()
            assert answer.status == 200
            assert script.splitlines() == [
                "#!ipxe",
                f"kernel http://127.0.0.1:{port}/v1/boot/files/migration-vmlinuz "
                f"ferry.gateway=https://127.0.0.1:{settings.gateway_port} ferry.vm={vm_id} "
                "console=ttyS0 no_timer_check",
                f"initrd http://127.0.0.1:{port}/v1/boot/files/migration-initrd.img",
                f"initrd http://127.0.0.1:{port}/v1/boot/files/ca.cpio",
                "boot",
            ]
            async with http.get("/v1/boot/files/migration-vmlinuz") as answer:
                assert await answer.read() == b"kernel"
            async with http.get("/v1/boot/files/ca.cpio") as answer:
                cpio = await answer.read()
            for refused in ("/v1/boot/files/base-image.tar.zst", f"/v1/vms/{vm_id}/script",
                            "/v1/boot/files/..%2Fsecrets.key", "/v1/boot/not-a-vm",
                            "/v1/groups"):
                async with http.get(refused) as answer:
                    assert answer.status == 404, refused
    finally:
        await runner.cleanup()
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=cpio, cwd=unpacked, check=True)
    assert (unpacked / "etc/ferry/ca.pem").read_bytes() == files.ca.read_bytes()


async def test_plain_http_only_by_the_setting(settings):
    """FERRY_GATEWAY_PLAIN_HTTP=true: plain HTTP, no CA made, and the boot chain brings none."""
    plain = settings.model_copy(update={"gateway_plain_http": True})
    assert tls.served_files(plain) is None and tls.trusted_ca(plain) is None
    assert not (settings.state_dir / "tls").exists()
    assert Gateway.from_settings(plain).url.startswith("http://")
