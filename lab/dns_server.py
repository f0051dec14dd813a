"""A real authoritative DNS server for the lab and the tests: BIND 9 (`named`, Debian's bind9),
primary for one zone, on loopback, accepting RFC 2136 updates signed with a TSIG key it was
given. Started in the foreground as a child, so stopping it leaves nothing behind."""

from __future__ import annotations

import asyncio
import base64
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message

from shared.dns import TsigKey

NAMED = "/usr/sbin/named"
START_TIMEOUT_S = 30.0


def named_missing() -> str | None:
    if not Path(NAMED).exists():
        return f"{NAMED} is not installed (apt-get install bind9)"
    return None


def zone_file(zone: str, records: dict[str, str], ttl: int) -> str:
    """A zone with its SOA and NS (ns1 at 127.0.0.1) and one A record per name ("@" = apex)."""
    lines = [f"$ORIGIN {zone}.", f"$TTL {ttl}",
             f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60",
             f"@ IN NS ns1.{zone}.", "ns1 IN A 127.0.0.1"]
    lines += [f"{name} IN A {address}" for name, address in records.items()]
    return "\n".join(lines) + "\n"


def named_conf(folder: Path, zone: str, port: int, key: TsigKey, address: str) -> str:
    return f"""
options {{
    directory "{folder}";
    pid-file "{folder}/named.pid";
    listen-on port {port} {{ {address}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-transfer {{ none; }};
    notify no;
}};
controls {{ }};
key "{key.name}" {{ algorithm {key.algorithm}; secret "{key.secret}"; }};
zone "{zone}" {{
    type primary;
    file "{folder}/{zone}.zone";
    allow-update {{ key "{key.name}"; }};
}};
"""


def spawn_named(folder: Path, zone: str, records: dict[str, str], ttl: int, port: int,
                key: TsigKey, address: str, log: Path) -> subprocess.Popen:
    """Write the zone and named.conf into `folder` and start named in the foreground (-g:
    logs to `log`, no fork, so the child is the server), in a session of its own."""
    (folder / f"{zone}.zone").write_text(zone_file(zone, records, ttl))
    conf = folder / "named.conf"
    conf.write_text(named_conf(folder, zone, port, key, address))
    with open(log, "ab") as out:
        return subprocess.Popen([NAMED, "-g", "-c", str(conf)], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, start_new_session=True)


async def soa_answers(zone: str, address: str, port: int) -> bool:
    """Whether the server at address:port answers for the zone's SOA (within half a second)."""
    query = dns.message.make_query(zone, "SOA")
    try:
        response = await dns.asyncquery.udp(query, address, port=port, timeout=0.5)
    except (dns.exception.DNSException, OSError, asyncio.TimeoutError):
        return False
    return bool(response.answer)


@dataclass
class AuthoritativeServer:
    """`async with AuthoritativeServer(folder, "shop.example", {"@": "198.51.100.11"}, port)`."""

    folder: Path
    zone: str
    records: dict[str, str]
    port: int
    address: str = "127.0.0.1"
    ttl: int = 300
    key: TsigKey | None = None
    process: subprocess.Popen | None = None

    async def __aenter__(self) -> AuthoritativeServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = self.key or TsigKey("ferry-cutover",
                                       base64.b64encode(secrets.token_bytes(32)).decode())
        self.process = spawn_named(self.folder, self.zone, self.records, self.ttl, self.port,
                                   self.key, self.address, self.folder / "named.log")
        await self._wait_answering()
        return self

    async def _wait_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"named exited at once: {self.log_tail()}")
            if await soa_answers(self.zone, self.address, self.port):
                return
            await asyncio.sleep(0.1)
        await self.__aexit__()
        raise RuntimeError(f"named did not answer within {START_TIMEOUT_S}s: {self.log_tail()}")

    def log_tail(self) -> str:
        return (self.folder / "named.log").read_text(errors="replace")[-1500:]

    async def __aexit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)

