"""The boot listener: plain HTTP on the migration network for the one client that speaks no TLS,
QEMU's iPXE NIC ROM (Debian's ipxe-qemu is built without HTTPS, and its trust is fixed when it
is built). It serves the migration image's boot chain and nothing else, and never a token:

- `GET /v1/boot/{vm_id}`: the iPXE script: kernel and initrds from here, a kernel command line
  naming the gateway's HTTPS URL and the VM, not its token (the migration image reads that
  from the VM's SMBIOS serial, where the provider put it);
- `GET /v1/boot/files/{migration-vmlinuz,migration-initrd.img}`: the migration image (Debian's
  packages and Ferryman's init, no secret);
- `GET /v1/boot/files/ca.cpio`: the installation's CA as a small initrd, which the kernel
  unpacks over the image's (concatenated initrds) at /etc/ferry/ca.pem: the one CA the image's
  curl trusts.

What this does not protect: someone on the migration network can answer in the gateway's
place during the boot chain (docs/security.md, "In clear on the migration network").
"""

from __future__ import annotations

import uuid

from aiohttp import web

from shared import tls
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
IMAGE_FILES = ("migration-vmlinuz", "migration-initrd.img")
CA_IN_IMAGE = "etc/ferry/ca.pem"


def boot_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app.router.add_get("/v1/boot/files/ca.cpio", ca_initrd)
    app.router.add_get("/v1/boot/files/{name}", image_file)
    app.router.add_get("/v1/boot/{vm_id}", boot_script)
    return app


async def boot_script(request: web.Request) -> web.Response:
    try:
        vm_id = uuid.UUID(request.match_info["vm_id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such VM: the path must be /v1/boot/<VM uuid>\n") from None
    settings = request.app[SETTINGS]
    # The addresses as this VM reached them (the migration network's host address, say).
    host = request.url.host
    here = f"http://{request.host}/v1/boot/files"
    gateway = f"{tls.gateway_scheme(settings)}://{host}:{settings.gateway_port}"
    # no_timer_check: under emulation (TCG) on a loaded host the kernel's early IO-APIC timer
    # check can miss its ticks and panic; the migration kernel lives minutes.
    args = f"ferry.gateway={gateway} ferry.vm={vm_id} console=ttyS0 no_timer_check"
    lines = ["#!ipxe", f"kernel {here}/migration-vmlinuz {args}",
             f"initrd {here}/migration-initrd.img"]
    if tls.trusted_ca(settings) is not None:
        lines.append(f"initrd {here}/ca.cpio")
    lines.append("boot")
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def image_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in IMAGE_FILES:
        raise web.HTTPNotFound(text=f"the boot listener serves only {', '.join(IMAGE_FILES)} "
                                    "and ca.cpio\n")
    path = request.app[SETTINGS].images_dir / name
    if not path.is_file():
        raise web.HTTPNotFound(text=f"no {name} in the lab images (FERRY_LAB_IMAGES)\n")
    return web.FileResponse(path)


async def ca_initrd(request: web.Request) -> web.Response:
    ca = tls.trusted_ca(request.app[SETTINGS])
    if ca is None or not ca.is_file():
        raise web.HTTPNotFound(text="no CA: the gateway serves plain HTTP\n")
    body = newc_archive({CA_IN_IMAGE: ca.read_bytes()})
    return web.Response(body=body, content_type="application/octet-stream")


def newc_archive(files: dict[str, bytes]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as an initramfs: each file's
    folders first (mode 0755), the files (mode 0644, root's), the trailer."""
    entries: list[tuple[str, int, bytes]] = []
    seen: set[str] = set()
    for name, data in files.items():
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in seen:
                seen.add(folder)
                entries.append((folder, 0o040755, b""))
        entries.append((name, 0o100644, data))
    out = bytearray()
    for number, (name, mode, data) in enumerate(entries, start=1):
        out += _newc_entry(name, mode, data, number, nlink=2 if mode & 0o040000 else 1)
    out += _newc_entry("TRAILER!!!", 0, b"", 0, nlink=1)
    return bytes(out)


def _newc_entry(name: str, mode: int, data: bytes, ino: int, nlink: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    return (_pad(header + encoded) + _pad(data))


def _pad(chunk: bytes) -> bytes:
    return chunk + b"\0" * (-len(chunk) % 4)
