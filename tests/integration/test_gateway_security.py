"""The gateway's defences against the real PostgreSQL and RabbitMQ: VM tokens hashed at rest,
scoped to one VM and dead once it is live; token failures rate-limited per client address; the
operator token on every operator route (walked from the route registry); body size limit and
request timeout; problem answers for aiohttp's own refusals; optional TLS."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import ssl
import subprocess
import time
import uuid

import aiohttp
import pytest

from cli.client import Gateway
from services.gateway.api import api
from services.gateway.app import build_app  # noqa: F401 - registers every route
from services.runtime import Host
from shared.providers.base import BootSource
from tests.conftest import OPERATOR_TOKEN, eventually
from tests.integration.harness import THREE_VMS, Ferry, start_ferry

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
        cli = Gateway.from_settings(secure)
        assert cli.url == base
        groups = await asyncio.to_thread(cli.call, "GET", "/v1/groups")
        assert groups == {"groups": []}
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
