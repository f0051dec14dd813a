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


@dataclass
class AuthoritativeServer:
    """`async with AuthoritativeServer(folder, "shop.example", {"@": "203.0.113.11"}, port)`."""

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
        (self.folder / f"{self.zone}.zone").write_text(
            zone_file(self.zone, self.records, self.ttl))
        conf = self.folder / "named.conf"
        conf.write_text(named_conf(self.folder, self.zone, self.port, self.key, self.address))
        log = open(self.folder / "named.log", "wb")
        # -g: foreground, logs to stderr, no fork: the child is the server.
        self.process = subprocess.Popen([NAMED, "-g", "-c", str(conf)], stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        await self._wait_answering()
        return self

    async def _wait_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        query = dns.message.make_query(self.zone, "SOA")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"named exited at once: {self.log_tail()}")
            try:
                await dns.asyncquery.udp(query, self.address, port=self.port, timeout=0.5)
                return
            except (dns.exception.Timeout, OSError):
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

