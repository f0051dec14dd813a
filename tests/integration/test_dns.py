"""The cutover's DNS driver against a real BIND 9 on loopback: RFC 2136 updates signed with
TSIG change what the server answers; a wrong key or a dead server is a clear error that
changes nothing."""

from __future__ import annotations

import base64
import secrets

import pytest

from lab.dns_server import AuthoritativeServer, named_missing
from shared.dns import DnsError, RecordSet, Rfc2136Driver, TsigKey
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def server(tmp_path):
    reason = named_missing()
    if reason:
        pytest.skip(reason)
    async with AuthoritativeServer(tmp_path / "named", "shop.example",
                                   {"@": "203.0.113.11", "www": "203.0.113.11"},
                                   port=free_port()) as server:
        yield server


def driver_for(server: AuthoritativeServer, key: TsigKey | None = None) -> Rfc2136Driver:
    return Rfc2136Driver("127.0.0.1", "shop.example", key or server.key, port=server.port)


async def test_lower_the_ttl_then_point_the_name_at_the_new_address(server):
    """The two DNS steps of a cutover, and the undo of each: the server answers what was set."""
    dns = driver_for(server)
    before = await dns.lookup("shop.example")
    assert before == RecordSet("shop.example", "A", 300, ("203.0.113.11",))
    await dns.replace("shop.example", "A", list(before.values), ttl=5)
    assert await dns.lookup("shop.example") == RecordSet("shop.example", "A", 5,
                                                         ("203.0.113.11",))
    await dns.replace("shop.example", "A", ["198.51.100.11"], ttl=5)
    assert (await dns.lookup("shop.example")).values == ("198.51.100.11",)
    assert (await dns.lookup("www.shop.example")).values == ("203.0.113.11",)  # untouched
    await dns.replace("shop.example", "A", list(before.values), ttl=before.ttl)  # the undo
    assert await dns.lookup("shop.example") == before
    assert await dns.lookup("nothing.shop.example") is None


async def test_a_wrong_key_is_refused_and_changes_nothing(server):
    """An update signed with another secret is an error naming the key; the record stays."""
    wrong = TsigKey(server.key.name, base64.b64encode(secrets.token_bytes(32)).decode())
    with pytest.raises(DnsError, match="rejected the TSIG key .ferry-cutover."):
        await driver_for(server, wrong).replace("shop.example", "A", ["198.51.100.11"], 5)
    assert (await driver_for(server).lookup("shop.example")).values == ("203.0.113.11",)


async def test_names_outside_the_zone_and_dead_servers_are_clear_errors(server):
    """A name of another zone is refused before anything is sent; a server that does not
    answer is named with its address."""
    with pytest.raises(DnsError, match="not in zone shop.example"):
        await driver_for(server).replace("shop.other", "A", ["198.51.100.11"], 5)
    dead = Rfc2136Driver("127.0.0.1", "shop.example", server.key, port=free_port(), timeout=1)
    with pytest.raises(DnsError, match=r"DNS server 127\.0\.0\.1:\d+"):
        await dead.replace("shop.example", "A", ["198.51.100.11"], 5)
