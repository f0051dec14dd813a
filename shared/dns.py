"""DNS for the cutover: read a name's records and replace them, behind a small driver interface.

The cutover lowers a name's TTL ahead of the window and points it at the new public address in
the window; each change's undo is the same call with the old answer. `Rfc2136Driver` speaks
RFC 2136 dynamic updates, signed with TSIG (RFC 8945), to the zone's primary server: what BIND,
Knot, PowerDNS and most hosted DNS offer. Other providers (a cloud's API) fit the same
interface.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

TIMEOUT_S = 5.0


class DnsError(Exception):
    """A lookup or update failed; the message names the server, the name and the reason."""


@dataclass(frozen=True)
class RecordSet:
    name: str  # fully qualified, without the trailing dot: "shop.example"
    rdtype: str  # "A", "AAAA", "CNAME" ...
    ttl: int
    values: tuple[str, ...]


class DnsDriver(Protocol):
    async def lookup(self, name: str, rdtype: str = "A") -> RecordSet | None:
        """The record set as the zone's server has it now, or None if there is none."""

    async def replace(self, name: str, rdtype: str, values: list[str], ttl: int) -> None:
        """Make the record set exactly `values` with `ttl`, in one atomic update."""


@dataclass(frozen=True)
class TsigKey:
    name: str
    secret: str  # base64, as tsig-keygen prints it
    algorithm: str = "hmac-sha256"

    def bind_text(self) -> str:
        """The key as BIND's `key` statement: what `tsig-keygen NAME` prints."""
        return (f'key "{self.name}" {{\n\talgorithm {self.algorithm};\n'
                f'\tsecret "{self.secret}";\n}};\n')

    @classmethod
    def from_file(cls, path: Path) -> TsigKey:
        """The first key of a BIND key file (tsig-keygen's output, or `bind_text`)."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DnsError(f"the TSIG key file {path} cannot be read: {exc.strerror}") from None
        found = _KEY_STATEMENT.search(text)
        if found is None:
            raise DnsError(f"{path} holds no TSIG key (expected what `tsig-keygen NAME` prints: "
                           'key "NAME" { algorithm ...; secret "..."; };)')
        return cls(name=found["name"], algorithm=found["algorithm"], secret=found["secret"])


_KEY_STATEMENT = re.compile(r'key\s+"(?P<name>[^"]+)"\s*\{\s*algorithm\s+(?P<algorithm>[\w-]+)\s*;'
                            r'\s*secret\s+"(?P<secret>[^"]+)"\s*;')


class Rfc2136Driver:
    """Dynamic updates to the primary server of `zone` at `server:port`."""

    def __init__(self, server: str, zone: str, key: TsigKey | None, port: int = 53,
                 timeout: float = TIMEOUT_S):
        self.server = server
        self.port = port
        self.zone = dns.name.from_text(zone)
        self.key = key
        self.timeout = timeout
        self._keyring = (dns.tsigkeyring.from_text({key.name: (key.algorithm, key.secret)})
                         if key else None)

    @property
    def where(self) -> str:
        return f"DNS server {self.server}:{self.port} (zone {self.zone.to_text(True)})"

    def _name(self, name: str) -> dns.name.Name:
        absolute = dns.name.from_text(name)
        if not absolute.is_subdomain(self.zone):
            raise DnsError(f"{name} is not in zone {self.zone.to_text(True)}")
        return absolute

    async def lookup(self, name: str, rdtype: str = "A") -> RecordSet | None:
        query = dns.message.make_query(self._name(name), rdtype)
        response = await self._send(query, f"looking up {name} {rdtype}", tcp=False)
        if response.rcode() == dns.rcode.NXDOMAIN:
            return None
        self._require_ok(response, f"looking up {name} {rdtype}")
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.from_text(rdtype):
                return RecordSet(name=name.rstrip("."), rdtype=rdtype, ttl=rrset.ttl,
                                 values=tuple(sorted(r.to_text() for r in rrset)))
        return None

    async def replace(self, name: str, rdtype: str, values: list[str], ttl: int) -> None:
        if not values:
            raise DnsError(f"refusing to replace {name} {rdtype} with no values")
        update = dns.update.UpdateMessage(self.zone, keyring=self._keyring,
                                          keyname=self.key and self.key.name,
                                          keyalgorithm=self.key.algorithm if self.key else
                                          dns.tsig.default_algorithm)
        # Relative to the zone: dnspython otherwise appends the zone to an absolute name's text.
        update.replace(self._name(name).relativize(self.zone), ttl, rdtype, *values)
        what = f"setting {name} {rdtype} to {', '.join(values)} (TTL {ttl})"
        self._require_ok(await self._send(update, what, tcp=True), what)

    async def _send(self, message: dns.message.Message, what: str, tcp: bool):
        send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
        try:
            return await send(message, self.server, port=self.port, timeout=self.timeout)
        except (dns.exception.Timeout, asyncio.TimeoutError):
            raise DnsError(f"{what}: {self.where} did not answer within "
                           f"{self.timeout:.0f}s") from None
        except dns.tsig.PeerError as exc:  # the server rejected our signature
            raise DnsError(f"{what}: {self.where} rejected the TSIG key "
                           f"{self.key and self.key.name!r} ({exc})") from None
        except (OSError, dns.exception.DNSException) as exc:
            raise DnsError(f"{what}: {self.where}: {exc}") from None

    def _require_ok(self, response: dns.message.Message, what: str) -> None:
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            hint = {dns.rcode.REFUSED: " (is the TSIG key allowed to update this zone?)",
                    dns.rcode.NOTAUTH: " (is the server the zone's primary, and the key right?)",
                    }.get(rcode, "")
            raise DnsError(f"{what}: {self.where} answered {dns.rcode.to_text(rcode)}{hint}")
