"""Requests whose headers lie about their body, or that aiohttp's parser cannot read, sent
byte for byte to the real gateway: Content-Encoding (gzip, deflate, br, garbage) on bodies
that are not so encoded, Transfer-Encoding and Content-Length lies, oversized and repeated
headers. Each is answered 4xx with a JSON problem, never 5xx, never a traceback, never with
the offending header's value echoed; and a request without a valid token is answered 401
whatever its body, on every route that takes a token (walked from the route registry)."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from services.gateway.api import api
from services.gateway.app import build_app  # noqa: F401 - registers every route
from services.runtime import Host
from shared.store.session import Session
from tests.conftest import OPERATOR_TOKEN
from tests.integration.harness import THREE_VMS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

# Put into the offending header's value: it must not come back in the answer.
MARKER = "MARKER-7f3a"
NOT_ENCODED = b'{"state": "configured", "step": "done"}'
LYING_ENCODINGS = ["gzip", "deflate", "br", "x-" + MARKER]
BODY_ROUTES = [r for r in api.routes if r.method in ("POST", "PUT", "PATCH", "DELETE")
               and r.auth in ("vm", "operator")]


@pytest.fixture
def settings(settings):
    # A Content-Length that promises more than is sent is waited for until the request timeout.
    return settings.model_copy(update={"gateway_auth_failures": 1_000_000,
                                       "gateway_request_timeout_s": 1.0})


@pytest.fixture
async def gateway(settings):
    """The gateway alone (nothing moves), with a group whose VMs hold tokens."""
    host = Host(settings, [], gateway=True)
    await host.start()
    try:
        async with aiohttp.ClientSession(settings.gateway_url) as http:
            async with http.post("/v1/groups", data=THREE_VMS.format(group="shop"),
                                 headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as answer:
                assert answer.status == 201, await answer.text()
                group_id = uuid.UUID((await answer.json())["id"])
        async with host.pool.acquire() as conn:
            vm_id = await conn.fetchval("SELECT id FROM vms WHERE group_id = $1 LIMIT 1", group_id)
            token = await Session(conn).tokens.issue(vm_id)
        host.vm = (vm_id, token)
        yield host
    finally:
        await host.stop()


async def send(host: Host, head: str, body: bytes = b"", half_close: bool = False) -> bytes:
    """The bytes as given (the request line and headers, CRLF-joined); the first answer (an
    interim 100 Continue skipped), or b"" if the connection closes without one. Only the one
    answer is read: aiohttp lingers on a connection whose body was not all read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n" + body)
        await writer.drain()
        if half_close:
            writer.write_eof()
        while True:
            try:
                head_in = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
            except asyncio.IncompleteReadError:
                return b""
            if not head_in.startswith(b"HTTP/1.1 100 "):
                break
        length = next((int(line.split(b":", 1)[1]) for line in head_in.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        return head_in + await asyncio.wait_for(reader.readexactly(length), 15)
    finally:
        writer.close()


def problem_answer(raw: bytes) -> tuple[int, dict]:
    """The status and JSON body of the first answer in `raw`, checked to be a problem."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers.get("content-type", "").startswith("application/json"), raw[:400]
    length = int(headers["content-length"])
    body = json.loads(rest[:length])
    assert set(body) == {"error", "problems"}, body
    assert b"Traceback" not in raw and MARKER.encode() not in raw, raw[:400]
    return status, body


def request_head(method: str, path: str, *headers: str) -> str:
    return "\n".join([f"{method} {path} HTTP/1.1", "Host: gateway", *headers,
                      "Connection: close"])


def path_of(route, vm_id) -> str:
    return route.path.format(vm_id=vm_id, group="shop", service="archiver", name="someone")


async def test_no_token_no_answer_but_401_whatever_the_body(gateway):
    """Every route that takes a body and a token, without one and with a wrong one, with a
    body that lies about its encoding or its length: 401 (403 for a wrong operator token)
    before the body is looked at.
    (Before: a VM's state report read its body first, and a gzip lie answered 500.)"""
    vm_id, _ = gateway.vm
    assert len(BODY_ROUTES) >= 5
    for route in BODY_ROUTES:
        for credentials in ([], [f"Authorization: Bearer wrong-{MARKER}"]):
            lies = [([f"Content-Encoding: {e}", f"Content-Length: {len(NOT_ENCODED)}"],
                     NOT_ENCODED) for e in LYING_ENCODINGS]
            lies.append(([f"Content-Length: {len(NOT_ENCODED) + 100}"], NOT_ENCODED))
            for headers, body in lies:
                raw = await send(gateway, request_head(route.method, path_of(route, vm_id),
                                                       *credentials, *headers), body)
                status, _ = problem_answer(raw)
                # 401 without a token; a wrong operator token is 403 (auth.require_operator).
                assert status == (401 if not credentials or route.auth == "vm" else 403), (
                    route.method, route.path, headers, raw[:300])


async def test_a_body_that_lies_about_itself_is_a_4xx_problem_with_a_valid_token(gateway):
    """Every route that reads a body, with its valid token. (Before: a gzip lie answered 500.)"""
    vm_id, vm_token = gateway.vm
    for route in (r for r in BODY_ROUTES if r.body or r.body_schema):
        token = vm_token if route.auth == "vm" else OPERATOR_TOKEN
        auth = f"Authorization: Bearer {token}"
        path = path_of(route, vm_id)
        cases = {
            **{f"Content-Encoding {e}": ([f"Content-Encoding: {e}",
                                          f"Content-Length: {len(NOT_ENCODED)}"], NOT_ENCODED,
                                         {415})
               for e in LYING_ENCODINGS},
            "Transfer-Encoding chunked, body not": (["Transfer-Encoding: chunked"],
                                                    NOT_ENCODED + b"\r\n\r\n", {400}),
            "Transfer-Encoding unknown": ([f"Transfer-Encoding: {MARKER}"], NOT_ENCODED, {400}),
            "two Content-Lengths": (["Content-Length: 3", "Content-Length: 4"], b"abcd", {400}),
            "Content-Length not a number": ([f"Content-Length: {MARKER}"], b"", {400}),
            "Content-Length longer than the body": ([f"Content-Length: {len(NOT_ENCODED) * 2}"],
                                                    NOT_ENCODED, {408}),
        }
        for name, (headers, body, wanted) in cases.items():
            raw = await send(gateway, request_head(route.method, path, auth, *headers), body)
            status, _ = problem_answer(raw)
            assert status in wanted, (route.path, name, raw[:300])


async def test_a_content_length_shorter_than_the_body_is_a_4xx_problem(gateway):
    """The bytes past the Content-Length are read as a next request, which the parser refuses
    (when they arrive with the first, aiohttp answers that refusal alone): a 4xx problem."""
    vm_id, vm_token = gateway.vm
    head = request_head("POST", f"/v1/vms/{vm_id}/state", f"Authorization: Bearer {vm_token}",
                        "Content-Length: 10")
    status, _ = problem_answer(await send(gateway, head, NOT_ENCODED + MARKER.encode()))
    assert 400 <= status < 500


async def test_parser_refusals_are_problems_that_repeat_nothing(gateway):
    """aiohttp's own refusals (they never reach the middlewares): a header too long, too many
    headers, a header that is not HTTP; before, a 400 in text that echoed the header back."""
    vm_id, _ = gateway.vm
    for headers in ([f"X-Big: {MARKER}" + "a" * 9000],
                    [f"Authorization: Bearer {MARKER}" + "a" * 9000],
                    [f"X-Repeated-{i}: {MARKER}" for i in range(200)],
                    [f"Cookie: {MARKER}"] * 200,
                    [f"X Bad Name: {MARKER}"],
                    [f"X-Control: {MARKER}\x01"]):
        for path in ("/v1/groups", f"/v1/vms/{vm_id}/state"):
            raw = await send(gateway, request_head("POST", path, *headers,
                                                   "Content-Length: 2"), b"{}")
            status, body = problem_answer(raw)
            assert status == 400, (headers[0][:40], raw[:300])
    # The gateway still answers on a new connection.
    raw = await send(gateway, request_head("GET", "/v1/groups",
                                           f"Authorization: Bearer {OPERATOR_TOKEN}"))
    assert raw.startswith(b"HTTP/1.1 200"), raw[:300]


HEADER_NAMES = ["Content-Encoding", "Transfer-Encoding", "Content-Length", "Content-Type",
                "Authorization", "Expect", "Connection", "Host", "X-Fuzz"]


@hypothesis_settings(max_examples=60, deadline=None, database=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_fuzzed_headers_never_get_a_5xx_or_past_authentication(gateway, data):
    """Generated headers (names that matter for the body, values from the plausible to the
    absurd, repeated) on every body route, with a valid token, a wrong one or none."""
    host = gateway
    vm_id, vm_token = host.vm
    route = data.draw(st.sampled_from(BODY_ROUTES), label="route")
    token = data.draw(st.sampled_from([None, "wrong",
                                       vm_token if route.auth == "vm" else OPERATOR_TOKEN]))
    value = st.one_of(
        st.sampled_from(["gzip", "deflate", "br", "identity", "chunked", "0", "-1", "99999999",
                         "gzip, chunked", "100-continue", "keep-alive", ""]),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        st.integers(0, 20_000).map(lambda n: "a" * n))
    headers = data.draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), value), max_size=6))
    body = data.draw(st.binary(max_size=200))
    lines = [f"{name}: {text}" for name, text in headers]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if not any(name in ("Content-Length", "Transfer-Encoding") for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    raw = await send(host, request_head(route.method, path_of(route, vm_id), *lines), body,
                     half_close=True)
    if not raw:  # the gateway may close a connection it cannot frame; it must not answer 5xx
        return
    status = int(raw.split(b" ", 2)[1])
    assert status < 500, raw[:300]
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert b"content-type: application/json" in head, raw[:300]
    assert b"Traceback" not in raw
    valid = token not in (None, "wrong") and sum(
        1 for name, _ in headers if name == "Authorization") == 0
    if not valid and status not in (400, 413):  # a parser refusal comes before any route
        assert status in (401, 403), (route.path, lines, raw[:300])
