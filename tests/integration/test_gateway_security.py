"""The gateway's defences against the real PostgreSQL and RabbitMQ: VM tokens hashed at rest,
scoped to one VM and dead once it is live; token failures rate-limited per client address; the
operator token on every operator route (walked from the route registry); body size limit and
request timeout; problem answers for aiohttp's own refusals; optional TLS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import ssl
import stat
import subprocess
import time
import uuid
import warnings
from urllib.parse import urlparse

import aiohttp
import pytest
from structlog.testing import capture_logs

from cli.client import Gateway
from services.gateway.api import api
from services.gateway.app import build_app  # noqa: F401 - registers every route
from services.gateway.app import operator_token, ssl_context
from services.runtime import Host
from shared.providers.base import BootSource
from shared.settings import Settings
from tests.conftest import OPERATOR_TOKEN, eventually
from tests.integration.harness import THREE_VMS, Ferry, start_ferry
from tests.integration.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

# Values for the path parameters of the registry's routes.
PATH_VALUES = {"group": "shop", "service": "archiver", "name": "migration-vmlinuz",
               "archive_id": str(uuid.uuid4())}


def fill(path: str, vm_id: uuid.UUID) -> str:
    return path.format(vm_id=vm_id, **PATH_VALUES)


@pytest.fixture
def settings(settings):
    # The walk below fails on purpose far more often than an attacker is allowed to.
    return settings.model_copy(update={"gateway_auth_failures": 10_000})


@pytest.fixture
async def ferry(settings, operator):
    ferry = await start_ferry(settings, operator)
    yield ferry
    await ferry.host.stop()


async def booted_group(ferry: Ferry) -> dict[str, uuid.UUID]:
    group_id = await ferry.submit(THREE_VMS.format(group="shop"))
    ids = await ferry.vm_ids(group_id)
    for vm_id in ids.values():
        await ferry.wait_booted(vm_id, BootSource.NETWORK)
    return ids


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def test_vm_tokens_are_stored_only_as_hashes(ferry: Ferry):
    """No column of vm_tokens holds a token, in any spelling; each row holds its sha256."""
    ids = await booted_group(ferry)
    tokens = {name: ferry.token(vm_id) for name, vm_id in ids.items()}
    rows = await ferry.pool.fetch("SELECT * FROM vm_tokens")
    dump = repr([dict(r) for r in rows]) + " ".join(
        bytes(r["token_hash"]).hex() + bytes(r["token_hash"]).decode("latin-1") for r in rows)
    for token in tokens.values():
        assert token not in dump and token.encode().hex() not in dump
    hashes = {bytes(r["token_hash"]) for r in rows if r["revoked_at"] is None}
    assert hashes == {hashlib.sha256(t.encode()).digest() for t in tokens.values()}


async def test_a_vm_token_neither_reads_nor_writes_another_vm(ferry: Ferry):
    """app1's token on db2's endpoints: 403 everywhere, and db2 is left as it was."""
    ids = await booted_group(ferry)
    a, b = ids["app1"], ids["db2"]
    token = ferry.token(a)
    before = await ferry.pool.fetchrow("SELECT state, step, message FROM vms WHERE id = $1", b)
    messages_before = await ferry.pool.fetchval(
        "SELECT count(*) FROM vm_messages WHERE vm_id = $1", b)
    vm_routes = [r for r in api.routes if r.auth in ("vm", "vm-boot")]
    assert len(vm_routes) >= 8
    async with aiohttp.ClientSession(ferry.settings.gateway_url) as http:
        for route in vm_routes:
            if "{vm_id}" not in route.path:
                continue
            body = {"state": "configured", "step": "done"} if route.path.endswith("/state") \
                else {"level": "info", "text": "pwned"}
            async with http.request(route.method, fill(route.path, b), headers=bearer(token),
                                    params={"token": token} if route.auth == "vm-boot" else None,
                                    json=body if route.method == "POST" else None) as answer:
                assert answer.status == 403, (route.method, route.path, await answer.text())
                assert "another VM" in (await answer.json())["error"]
    after = await ferry.pool.fetchrow("SELECT state, step, message FROM vms WHERE id = $1", b)
    assert after == before
    assert await ferry.pool.fetchval(
        "SELECT count(*) FROM vm_messages WHERE vm_id = $1", b) == messages_before


async def test_a_vm_token_dies_when_its_vm_is_live(ferry: Ferry):
    """The same token that worked is refused (401) once the VM is live."""
    ids = await booted_group(ferry)
    vm_id = ids["app1"]
    headers = bearer(ferry.token(vm_id))
    async with aiohttp.ClientSession(ferry.settings.gateway_url) as http:
        async with http.get(f"/v1/vms/{vm_id}/script", headers=headers) as answer:
            assert answer.status == 200
        await ferry.pool.execute("UPDATE vms SET state = 'live' WHERE id = $1", vm_id)
        async with http.get(f"/v1/vms/{vm_id}/script", headers=headers) as answer:
            assert answer.status == 401
            assert "expired" in (await answer.json())["error"]
        async with http.post(f"/v1/vms/{vm_id}/messages", headers=headers,
                             json={"level": "info", "text": "still here"}) as answer:
            assert answer.status == 401


async def test_a_retry_revokes_the_tokens_the_vm_was_booted_with_before(ferry: Ferry):
    """A failed VM retried is booted again with a new token: the token of its earlier boot
    now gets 401 on every VM route it opened before, the new one is answered."""
    ids = await booted_group(ferry)
    vm_id = ids["app1"]
    old = ferry.token(vm_id)
    async with aiohttp.ClientSession(ferry.settings.gateway_url) as http:
        async with http.get(f"/v1/vms/{vm_id}/script", headers=bearer(old)) as answer:
            assert answer.status == 200
        async with http.post(f"/v1/vms/{vm_id}/state", headers=bearer(old),
                             json={"state": "failed", "step": "lvm", "message": "no space"}) as answer:
            assert answer.status == 200, await answer.text()
        await ferry.wait_group(ids_group := (await ferry.pool.fetchval(
            "SELECT group_id FROM vms WHERE id = $1", vm_id)), "halted")
        async with ferry.operator.post(f"/v1/vms/{vm_id}/retry") as answer:
            assert answer.status == 200, await answer.text()
        async with ferry.operator.post(f"/v1/groups/{ids_group}/resume") as answer:
            assert answer.status == 200, await answer.text()
        await ferry.wait_booted(vm_id, BootSource.NETWORK, count=2)
        new = ferry.token(vm_id)
        assert new != old
        for method, path, body in (("GET", f"/v1/vms/{vm_id}/script", None),
                                   ("POST", f"/v1/vms/{vm_id}/messages",
                                    {"level": "info", "text": "from the old boot"}),
                                   ("POST", f"/v1/vms/{vm_id}/state",
                                    {"state": "configured", "step": "done"})):
            async with http.request(method, path, headers=bearer(old), json=body) as answer:
                assert answer.status == 401, (method, path, await answer.text())
        async with http.get(f"/v1/boot/{vm_id}", params={"token": old}) as answer:
            assert answer.status == 401
        async with http.get(f"/v1/vms/{vm_id}/script", headers=bearer(new)) as answer:
            assert answer.status == 200
    assert await ferry.state(vm_id) == "configuring"
    assert await ferry.pool.fetchval(
        "SELECT count(*) FROM vm_messages WHERE vm_id = $1 AND text = 'from the old boot'",
        vm_id) == 0


async def test_the_replication_password_is_handed_to_the_groups_database_vms_only(ferry: Ferry):
    """GET /v1/vms/{vm}/replication with the VM's own token: the master and the replica get
    the group's password, the app server is refused (403) and learns nothing of it."""
    ids = await booted_group(ferry)
    password = await ferry.replication_password(await ferry.pool.fetchval(
        "SELECT group_id FROM vms WHERE id = $1", ids["app1"]))
    async with aiohttp.ClientSession(ferry.settings.gateway_url) as http:
        for name in ("db1", "db2"):
            async with http.get(f"/v1/vms/{ids[name]}/replication",
                                headers=bearer(ferry.token(ids[name]))) as answer:
                assert answer.status == 200
                assert (await answer.json())["password"] == password
        async with http.get(f"/v1/vms/{ids['app1']}/replication",
                            headers=bearer(ferry.token(ids["app1"]))) as answer:
            assert answer.status == 403
            assert password not in await answer.text()


async def test_every_operator_route_refuses_without_the_operator_token(ferry: Ferry):
    """Walks the route registry (not a hand list): every operator route answers 401 without a
    token, 403 with a wrong one and 403 with a VM's own token; every route the app serves is
    in the registry, so none escapes the walk."""
    ids = await booted_group(ferry)
    vm_token = ferry.token(ids["app1"])
    registered = {(r.method, r.path) for r in api.routes}
    served = {(route.method, route.resource.canonical) for route in ferry.host.gateway_app.router.routes()
              if route.method != "HEAD"}
    assert served - registered == {("GET", "/openapi.json")}  # public: the API's own description
    operator_routes = [r for r in api.routes if r.auth == "operator"]
    assert len(operator_routes) >= 15
    async with aiohttp.ClientSession(ferry.settings.gateway_url) as http:
        for route in operator_routes:
            path = fill(route.path, ids["app1"])
            for token, status in ((None, 401), ("not-the-token", 403), (vm_token, 403),
                                  (OPERATOR_TOKEN + "x", 403)):
                async with http.request(route.method, path, headers=bearer(token),
                                        json={"prepare": False}) as answer:
                    assert answer.status == status, (route.method, route.path, token)
                    assert "operator" in (await answer.json())["error"]
        # and the event stream's cookie is no way around it elsewhere
        async with http.get("/v1/groups", cookies={"ferry_events": "x" * 64}) as answer:
            assert answer.status == 401
    # Nothing changed: no group was resumed, no cutover requested, no VM retried.
    assert await ferry.pool.fetchval("SELECT count(*) FROM cutover_runs") == 0


async def test_repeated_token_failures_are_answered_429_with_retry_after(settings, operator):
    """Past FERRY_GATEWAY_AUTH_FAILURES refused tokens in the window, the address gets 429 with
    Retry-After (even with a good token); public pages still answer; the window frees it."""
    limited = settings.model_copy(update={"gateway_auth_failures": 5,
                                          "gateway_auth_window_s": 2.0})
    ferry = await start_ferry(limited, operator, services=())
    try:
        async with aiohttp.ClientSession(limited.gateway_url) as http:
            for i in range(5):
                async with http.get("/v1/groups", headers=bearer(f"guess-{i}")) as answer:
                    assert answer.status == 403
            async with http.get(f"/v1/vms/{uuid.uuid4()}/script",
                                headers=bearer("guess-vm")) as answer:
                assert answer.status == 429
                retry_after = int(answer.headers["Retry-After"])
                assert 1 <= retry_after <= 2
                assert "too many refused tokens" in (await answer.json())["error"]
            async with http.get("/v1/groups", headers=bearer(OPERATOR_TOKEN)) as answer:
                assert answer.status == 429
            async with http.get("/openapi.json") as answer:
                assert answer.status == 200

            async def freed():
                async with http.get("/v1/groups", headers=bearer(OPERATOR_TOKEN)) as answer:
                    return answer.status == 200
            started = time.monotonic()
            await eventually(freed, timeout=10, interval=0.2, what="the window to free")
            assert time.monotonic() - started <= retry_after + 1
    finally:
        await ferry.host.stop()


async def test_an_oversized_body_is_refused_with_413_and_changes_nothing(settings, operator):
    """Above FERRY_GATEWAY_MAX_BODY_BYTES a body is refused with a 413 problem answer, whether
    it announces its length or is chunked, and nothing is written."""
    small = settings.model_copy(update={"gateway_max_body_bytes": 4096})
    ferry = await start_ferry(small, operator)
    try:
        plan = THREE_VMS.format(group="shop")
        padded = plan + "description: '" + "x" * 5000 + "'\n"

        async def chunks():
            for i in range(0, len(padded), 1000):
                yield padded[i:i + 1000].encode()

        for data in (padded.encode(), chunks()):
            async with operator.post("/v1/groups", data=data) as answer:
                assert answer.status == 413
                body = await answer.json()
                assert "4096 bytes" in body["error"]
                assert body["problems"][0]["location"] == "(body)"
        assert await ferry.pool.fetchval("SELECT count(*) FROM groups") == 0
        assert await ferry.pool.fetchval("SELECT count(*) FROM outbox") == 0

        group_id = await ferry.submit(plan)  # the same plan within the limit is taken
        ids = await ferry.vm_ids(group_id)
        await ferry.wait_booted(ids["app1"], BootSource.NETWORK)
        async with aiohttp.ClientSession(small.gateway_url) as http:
            async with http.post(f"/v1/vms/{ids['app1']}/messages",
                                 headers=bearer(ferry.token(ids["app1"])),
                                 json={"level": "info", "text": "y" * 5000}) as answer:
                assert answer.status == 413
        assert await ferry.pool.fetchval(
            "SELECT count(*) FROM vm_messages WHERE vm_id = $1", ids["app1"]) == 0
    finally:
        await ferry.host.stop()


async def test_a_request_that_takes_too_long_is_cut_off_with_503(settings, operator):
    """FERRY_GATEWAY_REQUEST_TIMEOUT_S bounds every handler, the replica's long poll included:
    the answer is a 503 problem (which curl retries), not a hung connection."""
    quick = settings.model_copy(update={"gateway_request_timeout_s": 1.0})
    ferry = await start_ferry(quick, operator)
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        ids = await ferry.vm_ids(group_id)
        await ferry.wait_booted(ids["db2"], BootSource.NETWORK)
        started = time.monotonic()
        async with aiohttp.ClientSession(quick.gateway_url) as http:
            async with http.get(f"/v1/vms/{ids['db2']}/master", params={"wait": "30"},
                                headers=bearer(ferry.token(ids["db2"]))) as answer:
                assert answer.status == 503
                assert "longer than 1 s" in (await answer.json())["error"]
        assert time.monotonic() - started < 10
    finally:
        await ferry.host.stop()


async def test_aiohttp_refusals_are_problem_answers(ferry: Ferry):
    """Unknown paths and wrong methods answer JSON problems like every other refusal."""
    async with aiohttp.ClientSession(ferry.settings.gateway_url) as http:
        async with http.get("/v1/nothing-here") as answer:
            assert answer.status == 404
            assert (await answer.json())["error"] == "Not Found"
        async with http.delete("/v1/groups", headers=bearer(OPERATOR_TOKEN)) as answer:
            assert answer.status == 405
            assert "GET" in answer.headers["Allow"]
            assert (await answer.json())["error"] == "Method Not Allowed"


@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_the_gateway_serves_https_with_a_configured_certificate(settings, certificate):
    """With FERRY_GATEWAY_TLS_CERT and _KEY the gateway speaks only TLS; a client trusting the
    certificate (the CLI's Gateway included) is answered, a plain HTTP one is not."""
    cert, key = certificate
    secure = settings.model_copy(update={"gateway_tls_cert": cert, "gateway_tls_key": key})
    host = Host(secure, [], gateway=True)
    await host.start()
    try:
        base = f"https://127.0.0.1:{secure.gateway_port}"
        trusted = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(base) as http:
            async with http.get("/v1/groups", headers=bearer(OPERATOR_TOKEN), ssl=trusted) as answer:
                assert answer.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get("/openapi.json"):  # the system's CAs do not know it
                    pass
        async with aiohttp.ClientSession(f"http://127.0.0.1:{secure.gateway_port}") as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get("/openapi.json") as answer:
                    await answer.read()
        with pytest.raises(ValueError, match="go together"):  # one of the two alone
            ssl_context(settings.model_copy(update={"gateway_tls_cert": cert}))
        cli = Gateway.from_settings(secure)
        assert cli.url == base
        groups = await asyncio.to_thread(cli.call, "GET", "/v1/groups")
        assert groups["groups"] == [] and groups["total"] == 0
    finally:
        await host.stop()


async def test_text_that_cannot_be_stored_is_refused_with_its_location(ferry: Ferry):
    """NUL characters and unpaired surrogates (PostgreSQL stores neither) in a URL, a body or a
    plan are refused with 400/422 naming where they are, never a 500; nothing is written."""
    ids = await booted_group(ferry)
    vm_id = ids["app1"]
    vm = bearer(ferry.token(vm_id))
    op = bearer(OPERATOR_TOKEN)
    plan = THREE_VMS.format(group="other").replace("vms:", 'description: "a\\0b"\nvms:')
    async with aiohttp.ClientSession(ferry.settings.gateway_url) as http:
        cases = [
            ("POST", "/v1/groups", op, {"data": plan}, 422, "description"),
            ("POST", f"/v1/vms/{vm_id}/messages", vm,
             {"json": {"level": "info", "text": "a\u0000b"}}, 422, "text"),
            ("POST", f"/v1/vms/{vm_id}/messages", vm,
             {"data": b'{"level": "info", "text": "a\\ud800b"}'}, 422, None),
            ("POST", f"/v1/vms/{vm_id}/state", vm,
             {"json": {"state": "failed", "step": "x\u0000"}}, 422, "step"),
            ("GET", "/v1/groups/a%00b", op, {}, 400, "(path)"),
            ("POST", "/v1/groups/a%00b/cutover", op, {"json": {}}, 400, "(path)"),
            ("GET", "/v1/support/a%00b", vm, {}, 400, "(path)"),
            ("GET", f"/v1/archives/{vm_id}/a%00b", vm, {}, 400, "(path)"),
            ("POST", "/v1/dead-letters/archiver/replay?id=a%00b", op, {}, 400, "id"),
        ]
        for method, path, headers, kwargs, status, where in cases:
            async with http.request(method, path, headers=headers, **kwargs) as answer:
                assert answer.status == status, (method, path, await answer.text())
                problems = (await answer.json())["problems"]
                if where is None:  # the JSON parser itself refuses a lone surrogate
                    continue
                assert problems[0]["location"] == where, (path, problems)
                assert "NUL" in problems[0]["message"]
    assert await ferry.pool.fetchval("SELECT count(*) FROM groups") == 1
    assert await ferry.pool.fetchval("SELECT count(*) FROM vm_messages") == 0
    assert await ferry.state(vm_id) == "configuring"


async def test_the_store_or_the_broker_away_is_answered_503_with_retry_after(settings):
    """The gateway reaches PostgreSQL and RabbitMQ through relays the test cuts: while the
    store is away a VM's and an operator's request get 503 with Retry-After: 5, as do the
    routes that need the broker while it is away (each time, not only the first); once they
    are back the same requests are answered."""
    db, mq = urlparse(settings.database_url), urlparse(settings.amqp_url)
    store, broker = TcpProxy(db.hostname, db.port), TcpProxy(mq.hostname, mq.port)
    await store.start()
    await broker.start()
    relayed = settings.model_copy(update={"database_url": store.url(settings.database_url),
                                          "amqp_url": broker.url(settings.amqp_url)})
    host = Host(relayed, [], gateway=True)
    await host.start()
    try:
        async with aiohttp.ClientSession(relayed.gateway_url,
                                         timeout=aiohttp.ClientTimeout(total=20)) as http:
            vm_route = f"/v1/vms/{uuid.uuid4()}/script"
            for path, status in (("/v1/groups", 200), (vm_route, 401),
                                 ("/v1/dead-letters/archiver", 200)):
                async with http.get(path, headers=bearer(
                        "vm-token" if path == vm_route else OPERATOR_TOKEN)) as answer:
                    assert answer.status == status, (path, await answer.text())

            async def unavailable(path: str, token: str) -> None:
                for _ in range(3):
                    async with http.get(path, headers=bearer(token)) as answer:
                        assert answer.status == 503, (path, await answer.text())
                        assert answer.headers["Retry-After"] == "5"
                        assert "unavailable" in (await answer.json())["error"]

            await store.cut()
            await unavailable("/v1/groups", OPERATOR_TOKEN)
            await unavailable(vm_route, "vm-token")
            await store.restore()
            await broker.cut()
            await unavailable("/v1/dead-letters/archiver", OPERATOR_TOKEN)
            await broker.restore()

            async def answered(path: str) -> bool:
                async with http.get(path, headers=bearer(OPERATOR_TOKEN)) as answer:
                    return answer.status == 200
            await eventually(lambda: answered("/v1/groups"), what="the store back")
            await eventually(lambda: answered("/v1/dead-letters/archiver"), timeout=30,
                             what="the broker back")
    finally:
        # Back first, whatever failed: a graceful stop needs the broker to cancel consumers.
        await store.restore()
        await broker.restore()
        await host.stop()
        await store.cut()
        await broker.cut()


async def test_an_unexpected_failure_is_a_500_that_reveals_nothing(ferry: Ferry):
    """A failure nobody planned for (here the store's cutover_runs table gone) answers 500
    with a fixed text: no traceback, no SQL, no table, no file path; the cause goes to the
    gateway's log."""
    await ferry.submit(THREE_VMS.format(group="shop"))
    await ferry.pool.execute("ALTER TABLE cutover_runs RENAME TO cutover_runs_gone")
    try:
        with capture_logs() as logs:
            async with ferry.operator.get("/v1/groups/shop/cutover") as answer:
                status, body = answer.status, await answer.text()
    finally:
        await ferry.pool.execute("ALTER TABLE cutover_runs_gone RENAME TO cutover_runs")
    assert status == 500
    assert json.loads(body) == {"error": "internal error; see the gateway log", "problems": []}
    for revealing in ("Traceback", "cutover_runs", "SELECT", "relation", ".py", "/"):
        assert revealing not in json.loads(body)["error"], revealing
    logged = [entry for entry in logs if entry.get("event") == "request failed"]
    assert logged and logged[0]["path"] == "/v1/groups/shop/cutover"
    assert logged[0].get("exc_info"), logged[0]


async def test_a_long_poll_is_answered_at_the_cap(settings, operator):
    """?wait= longer than FERRY_GATEWAY_LONG_POLL_MAX_S: the replica's long poll on a master
    that is not complete is answered at the cap, with the status as it stands."""
    capped = settings.model_copy(update={"gateway_long_poll_max_s": 1.0})
    ferry = await start_ferry(capped, operator)
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        db2 = (await ferry.vm_ids(group_id))["db2"]
        await ferry.wait_booted(db2, BootSource.NETWORK)
        async with aiohttp.ClientSession(capped.gateway_url,
                                         timeout=aiohttp.ClientTimeout(total=15)) as http:
            started = time.monotonic()
            async with http.get(f"/v1/vms/{db2}/master", params={"wait": "30"},
                                headers=bearer(ferry.token(db2))) as answer:
                assert answer.status == 200
                status = await answer.json()
            took = time.monotonic() - started
        assert status["complete"] is False and status["master"] == "db1"
        assert 1.0 <= took < 5.0, took
    finally:
        await ferry.host.stop()


async def test_a_tls_1_1_client_is_refused(settings, certificate):
    """TLS 1.2 is the minimum: a client that speaks TLS 1.1 only (and would be answered by a
    server allowing it, which the test shows first) is refused in the handshake; TLS 1.2 is
    answered."""
    cert, key = certificate
    secure = settings.model_copy(update={"gateway_tls_cert": cert, "gateway_tls_key": key})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 itself
        old_client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old_client.minimum_version = old_client.maximum_version = ssl.TLSVersion.TLSv1_1
        old_client.set_ciphers("DEFAULT:@SECLEVEL=0")
        old_client.load_verify_locations(cert)
        lax = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        lax.minimum_version = ssl.TLSVersion.TLSv1
        lax.set_ciphers("DEFAULT:@SECLEVEL=0")
        lax.load_cert_chain(cert, key)

    async def handshake(port: int, client: ssl.SSLContext) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        return version

    # The client really speaks TLS 1.1: a server that allows it answers.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=lax)
    try:
        assert await handshake(server.sockets[0].getsockname()[1], old_client) == "TLSv1.1"
    finally:
        server.close()
        await server.wait_closed()

    host = Host(secure, [], gateway=True)
    await host.start()
    try:
        # Refused with an alert, or the connection dropped: either way no session.
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await handshake(secure.gateway_port, old_client)
        modern = ssl.create_default_context(cafile=str(cert))
        assert await handshake(secure.gateway_port, modern) in ("TLSv1.2", "TLSv1.3")
    finally:
        await host.stop()
    assert ssl_context(secure).minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_operator_token_file_is_made_readable_by_its_owner_only(tmp_path, monkeypatch):
    """Without FERRY_OPERATOR_TOKEN, the token made on first use is kept in
    FERRY_STATE_DIR/operator-token with mode 0600 (even under a permissive umask), and read
    back from there afterwards."""
    monkeypatch.delenv("FERRY_OPERATOR_TOKEN", raising=False)
    settings = Settings(state_dir=tmp_path / "state", operator_token=None)
    previous = os.umask(0)
    try:
        token = operator_token(settings)
    finally:
        os.umask(previous)
    path = settings.operator_token_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token and len(token) >= 32
    assert operator_token(settings) == token


async def test_the_gateway_stops_cleanly_while_the_broker_is_away(settings):
    """A gateway stopped while the broker is away (its channels closed, reconnecting) still
    stops: the live feed has nothing to cancel, and says so in the log instead of raising.
    (A service's consumer is not covered: its cancel waits for the broker to come back.)"""
    mq = urlparse(settings.amqp_url)
    broker = TcpProxy(mq.hostname, mq.port)
    await broker.start()
    host = Host(settings.model_copy(update={"amqp_url": broker.url(settings.amqp_url)}), [],
                gateway=True)
    await host.start()
    try:
        await broker.cut()
        await asyncio.wait_for(host.stop(), 30)
    finally:
        await broker.cut()
