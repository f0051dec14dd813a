"""Operators with roles against the real PostgreSQL, RabbitMQ and gateway: a viewer token is
refused on every action (the actions read from the served OpenAPI document, so a new one
cannot be forgotten) and served every read; an operator is refused on every admin operation;
a revoked token is refused at once; tokens are stored only as hashes; `ferry token` and
`ferry audit` drive it all from the command line; and after a journey the audit trail names
each action, who asked and how it ended."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

import aiohttp
import pytest

from services.runtime import SERVICES
from shared.providers.base import BootSource
from shared.roles import ROLES
from tests.conftest import OPERATOR_TOKEN
from tests.integration.harness import (THREE_VMS, Ferry, configure_vm, first_boot_app,
                                       load_master, start_ferry)
from tests.service_process import REPO

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


@pytest.fixture
def settings(settings):
    # Few refused tokens allowed: a role refusal is no guessed token and must not count.
    return settings.model_copy(update={"gateway_auth_failures": 3})


@pytest.fixture
async def gateway(settings, operator):
    """The gateway alone (no service consumes): the routes only need the store and the bus."""
    ferry = await start_ferry(settings, operator, services=())
    yield ferry
    await ferry.host.stop()


async def make_token(operator: aiohttp.ClientSession, name: str, role: str) -> str:
    async with operator.post("/v1/tokens", json={"name": name, "role": role}) as answer:
        body = await answer.json()
        assert answer.status == 201, body
        assert (body["name"], body["role"], body["created_by"]) == (name, role, "bootstrap")
        return body["token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def operations(operator: aiohttp.ClientSession) -> list[tuple[str, str, dict]]:
    """Every operation the served OpenAPI document says needs an operator role."""
    async with operator.get("/openapi.json") as answer:
        document = await answer.json()
    return [(method.upper(), path, op) for path, ops in document["paths"].items()
            for method, op in ops.items() if "x-ferry-role" in op]


async def fill(ferry: Ferry, path: str) -> str:
    group_id = await ferry.pool.fetchval("SELECT id FROM groups WHERE name = 'shop'")
    vm_id = await ferry.pool.fetchval("SELECT id FROM vms WHERE group_id = $1 LIMIT 1", group_id)
    return path.format(group="shop", vm_id=vm_id, service="archiver", name="someone")


async def ask(session: aiohttp.ClientSession, method: str, path: str, token: str):
    """The status and JSON body (None for what is not JSON, or is a stream) of one request."""
    async with session.request(method, path, headers=bearer(token)) as answer:
        if answer.content_type == "application/json":
            return answer.status, await answer.json()
        return answer.status, None


async def test_a_viewer_is_refused_every_action_and_served_every_read(gateway: Ferry,
                                                                      operator):
    await gateway.submit(THREE_VMS.format(group="shop"))
    viewer = await make_token(operator, "grafana", "viewer")
    found = await operations(operator)
    roles = {op["operationId"]: op["x-ferry-role"] for _, _, op in found}
    # The list, as the document states it (a route that lost its role shows here).
    assert {name: roles[name] for name in ("submit", "retry", "resume", "verify", "cutover")} \
        == dict.fromkeys(("submit", "retry", "resume", "verify", "cutover"), "operator")
    assert {name: roles[name] for name in ("list_tokens", "create_token", "revoke_token",
                                           "replay", "cancel", "finalize", "prune")} \
        == dict.fromkeys(("list_tokens", "create_token", "revoke_token", "replay", "cancel",
                          "finalize", "prune"), "admin")
    actions = [(m, p, op) for m, p, op in found if op["x-ferry-role"] != "viewer"]
    reads = [(m, p, op) for m, p, op in found if op["x-ferry-role"] == "viewer"]
    assert len(actions) >= 12 and len(reads) >= 12

    for method, path, op in actions:
        status, body = await ask(operator, method, await fill(gateway, path), viewer)
        assert status == 403, (method, path, body)
        assert f"needs the {op['x-ferry-role']} role" in body["error"], body
        assert "'grafana' has the viewer role" in body["error"]
    for method, path, op in reads:
        if op["operationId"] == "events_stream":  # a stream: its headers say enough
            async with operator.get(path, headers=bearer(viewer)) as answer:
                assert answer.status == 200
                assert answer.content_type == "text/event-stream"
            continue
        status, body = await ask(operator, method, await fill(gateway, path), viewer)
        assert status == 200, (method, path, body)

    # Each refusal is in the trail, with the route it was refused on; no read is.
    refused = await gateway.pool.fetch(
        "SELECT method, route, status, role FROM audit WHERE actor = 'grafana'")
    assert sorted((r["method"], r["route"]) for r in refused) \
        == sorted((m, p) for m, p, _ in actions)
    assert {(r["status"], r["role"]) for r in refused} == {(403, "viewer")}
    shop = await gateway.pool.fetchval("SELECT id FROM groups WHERE name = 'shop'")
    on_shop = await gateway.pool.fetchval(
        "SELECT count(*) FROM audit WHERE actor = 'grafana' AND group_id = $1", shop)
    assert on_shop == sum(1 for _, p, _ in actions if "{group}" in p or "{vm_id}" in p)


async def test_an_operator_is_refused_every_admin_operation(gateway: Ferry, operator):
    await gateway.submit(THREE_VMS.format(group="shop"))
    token = await make_token(operator, "alice", "operator")
    admin_only = [(m, p, op) for m, p, op in await operations(operator)
                  if op["x-ferry-role"] == "admin"]
    assert len(admin_only) >= 7
    for method, path, _ in admin_only:
        status, body = await ask(operator, method, await fill(gateway, path), token)
        assert status == 403, (method, path, body)
        assert "needs the admin role" in body["error"]
    # What an operator may do, it may: a read and an action of its role.
    assert (await ask(operator, "GET", "/v1/whoami", token)) \
        == (200, {"name": "alice", "role": "operator"})
    status, body = await ask(operator, "POST", "/v1/groups/shop/resume", token)
    assert status == 409 and "not halted" in body["error"], body  # past the role check


async def test_a_revoked_token_is_refused_at_once_and_tokens_are_stored_hashed(gateway: Ferry,
                                                                               operator):
    token = await make_token(operator, "ci", "admin")
    assert await ask(operator, "GET", "/v1/tokens", token) != (403, None)
    rows = await gateway.pool.fetch("SELECT * FROM operator_tokens")
    dump = repr([dict(r) for r in rows])
    assert token not in dump and len(rows) == 1 and len(bytes(rows[0]["token_hash"])) == 32
    async with operator.delete("/v1/tokens/ci") as answer:
        assert answer.status == 200
        assert (await answer.json())["revoked_at"] is not None
    status, body = await ask(operator, "GET", "/v1/whoami", token)
    assert status == 403 and "unknown or revoked" in body["error"]
    # The name stays taken; the bootstrap token's name is not for a stored one.
    for name in ("ci", "bootstrap"):
        async with operator.post("/v1/tokens", json={"name": name, "role": "viewer"}) as answer:
            assert answer.status == 409
    async with operator.delete("/v1/tokens/bootstrap") as answer:
        assert answer.status == 409
        assert "FERRY_OPERATOR_TOKEN" in (await answer.json())["error"]
    async with operator.delete("/v1/tokens/nobody") as answer:
        assert answer.status == 404


async def test_the_event_stream_cookie_dies_with_its_token(gateway: Ferry, operator):
    token = await make_token(operator, "screen", "viewer")
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base_url=gateway.settings.gateway_url,
                                     cookie_jar=jar) as browser:
        async with browser.post("/v1/ui/session", headers=bearer(token)) as answer:
            assert answer.status == 200
        async with browser.get("/v1/events") as answer:
            assert answer.status == 200
        async with operator.delete("/v1/tokens/screen") as answer:
            assert answer.status == 200
        async with browser.get("/v1/events") as answer:
            assert answer.status == 403


async def cli(settings, tmp_path, *args: str, token: str = OPERATOR_TOKEN):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update({"FERRY_GATEWAY_PORT": str(settings.gateway_port),
                "FERRY_GATEWAY_PLAIN_HTTP": str(settings.gateway_plain_http).lower(),
                "FERRY_OPERATOR_TOKEN": token,
                "FERRY_STATE_DIR": str(settings.state_dir),
                "XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": "200"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", *args, cwd=REPO, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, out.decode(), err.decode()


async def test_ferry_token_and_ferry_audit_against_the_gateway(gateway: Ferry, settings,
                                                               tmp_path):
    code, out, err = await cli(settings, tmp_path, "token", "create", "bob", "--role",
                               "viewer")
    assert code == 0, err
    token = out.strip()
    assert "shown this once" in out + err and len(token) > 30 and " " not in token
    code, out, err = await cli(settings, tmp_path, "token", "list", "-o", "json")
    assert code == 0, err
    [listed] = json.loads(out)["tokens"]
    assert (listed["name"], listed["role"], listed["revoked_at"]) == ("bob", "viewer", None)
    assert "token" not in listed and token not in out

    # bob may read but not make tokens; the CLI says so and names where the token came from.
    code, out, err = await cli(settings, tmp_path, "status", "-o", "json", token=token)
    assert code == 0, err
    code, out, err = await cli(settings, tmp_path, "token", "create", "eve", "--role",
                               "admin", token=token)
    assert code == 1 and "needs the admin role" in err and "FERRY_OPERATOR_TOKEN" in err

    code, out, err = await cli(settings, tmp_path, "token", "list", "-o", "json")
    [listed] = json.loads(out)["tokens"]
    assert listed["last_used_at"] is not None  # bob's status above

    code, out, err = await cli(settings, tmp_path, "token", "revoke", "bob")
    assert code == 0 and "token bob revoked" in out, err
    code, out, err = await cli(settings, tmp_path, "status", token=token)
    assert code == 1 and "unknown or revoked" in err

    code, out, err = await cli(settings, tmp_path, "audit", "-o", "json")
    assert code == 0, err
    trail = [(line["actor"], line["method"], line["route"], line["status"])
             for line in reversed(json.loads(out)["lines"])]
    # Listing tokens is an admin's operation, audited as every operation above a viewer's.
    assert trail == [("bootstrap", "POST", "/v1/tokens", 201),
                     ("bootstrap", "GET", "/v1/tokens", 200),
                     ("bob", "POST", "/v1/tokens", 403),
                     ("bootstrap", "GET", "/v1/tokens", 200),
                     ("bootstrap", "DELETE", "/v1/tokens/{name}", 200)]
    code, out, err = await cli(settings, tmp_path, "audit")
    assert code == 0 and "DELETE /v1/tokens/bob" in out, err


@pytest.fixture
async def ferry(settings, operator):
    # No cutover service: the cutover is asked for and audited; running it is not this test's.
    ferry = await start_ferry(settings, operator,
                              services=tuple(s for s in SERVICES if s != "cutover"))
    yield ferry
    await ferry.host.stop()


async def test_the_audit_trail_names_every_action_of_a_journey(ferry: Ferry, operator):
    """An operator token submits, a VM fails, it resumes too early, retries, resumes, checks
    the sites and asks for the cutover; a viewer tries to cancel; the trail (the API's and
    the group's page) has each, in order, with who asked and how it ended."""
    alice = await make_token(operator, "alice", "operator")
    viewer = await make_token(operator, "wall-screen", "viewer")
    async with aiohttp.ClientSession(base_url=ferry.settings.gateway_url,
                                     headers=bearer(alice)) as as_alice:
        async with as_alice.post("/v1/groups", data=THREE_VMS.format(group="shop")) as answer:
            assert answer.status == 201
            group_id = uuid.UUID((await answer.json())["id"])
        ids = await ferry.vm_ids(group_id)
        for vm_id in ids.values():
            await ferry.wait_booted(vm_id, BootSource.NETWORK)
        async with ferry.vm(ids["app1"]) as app:
            await app.state("failed", "lvm", message="lvcreate: insufficient free space")
        await ferry.wait_group(group_id, "halted")
        for name in ("db1", "db2"):
            await configure_vm(ferry, ids[name])
        async with as_alice.post("/v1/groups/shop/resume") as answer:
            assert answer.status == 409  # app1 still failed
        async with as_alice.post(f"/v1/vms/{ids['app1']}/retry") as answer:
            assert answer.status == 200
        async with as_alice.post("/v1/groups/shop/resume") as answer:
            assert answer.status == 200
        await ferry.wait_booted(ids["app1"], BootSource.NETWORK, count=2)
        await configure_vm(ferry, ids["app1"])
        await first_boot_app(ferry, ids["app1"])
        await load_master(ferry, ids["db1"])
        await ferry.wait_booted(ids["db2"], BootSource.DISK)
        async with ferry.vm(ids["db2"]) as replica:
            await replica.state("provisioned", "first-boot")
            await replica.state("loading", "load-dumps")
            assert (await replica.master(wait=10))["complete"]
            await replica.state("replicating", "replication-started")
            await replica.state("ready", "replicating")
        await ferry.wait_group(group_id, "ready")
        async with as_alice.get("/v1/groups/shop/verify") as answer:
            assert answer.status == 200
        async with as_alice.post("/v1/groups/shop/cutover", json={}) as answer:
            assert answer.status == 202, await answer.text()
    async with operator.post("/v1/groups/shop/cancel", headers=bearer(viewer)) as answer:
        assert answer.status == 403

    async with operator.get("/v1/audit", params={"group": "shop", "limit": "4"}) as answer:
        first = await answer.json()
    async with operator.get("/v1/audit", params={"group": "shop", "limit": "4",
                                                 "cursor": first["next_cursor"]}) as answer:
        second = await answer.json()
    assert second["next_cursor"] is None
    trail = [(line["actor"], line["role"], line["method"], line["route"], line["status"])
             for line in reversed(first["lines"] + second["lines"])]
    assert trail == [
        ("alice", "operator", "POST", "/v1/groups", 201),
        ("alice", "operator", "POST", "/v1/groups/{group}/resume", 409),
        ("alice", "operator", "POST", "/v1/vms/{vm_id}/retry", 200),
        ("alice", "operator", "POST", "/v1/groups/{group}/resume", 200),
        ("alice", "operator", "GET", "/v1/groups/{group}/verify", 200),
        ("alice", "operator", "POST", "/v1/groups/{group}/cutover", 202),
        ("wall-screen", "viewer", "POST", "/v1/groups/{group}/cancel", 403),
    ]
    lines = first["lines"] + second["lines"]
    assert {line["group"] for line in lines} == {"shop"}
    retry = next(line for line in lines if line["route"] == "/v1/vms/{vm_id}/retry")
    assert retry["vm_id"] == str(ids["app1"])
    cutover = next(line for line in lines if line["route"].endswith("/cutover"))
    run_id = await ferry.pool.fetchval("SELECT id FROM cutover_runs WHERE group_id = $1",
                                       group_id)
    assert cutover["detail"] == f"cutover run {run_id}"
    # The token made earlier are in the trail too, though of no group.
    async with operator.get("/v1/audit") as answer:
        every = (await answer.json())["lines"]
    assert [(line["detail"], line["group"]) for line in every[-2:]] == [
        ("made token 'wall-screen' (viewer)", None), ("made token 'alice' (operator)", None)]
