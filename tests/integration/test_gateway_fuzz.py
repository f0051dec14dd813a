"""Fuzzing the gateway with schemathesis, from the OpenAPI document the app itself serves at
/openapi.json, against the real app (in-process aiohttp server on loopback) over the real
PostgreSQL and RabbitMQ, with valid operator and VM tokens so that generated requests reach the
handlers. The property: no request, however odd, makes the gateway answer 5xx.

Bounded for CI: FERRY_FUZZ_EXAMPLES examples per operation (default 40) and a derandomized
(repeatable) search; FERRY_FUZZ_RANDOM=1 explores a new part of the space on each run. The count
of requests sent per operation is written to test-artifacts/fuzz/gateway.json."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import threading
import uuid
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from services.runtime import Host
from services.reset import remove_everything
from shared.settings import Settings
from services.topology import topology
from shared.store.session import Session
from tests.conftest import OPERATOR_TOKEN, free_port
from tests.integration.harness import THREE_VMS

pytestmark = [pytest.mark.integration]

EXAMPLES = int(os.environ.get("FERRY_FUZZ_EXAMPLES", "40"))
RANDOM = os.environ.get("FERRY_FUZZ_RANDOM") == "1"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "fuzz"
# The event stream answers for as long as the client listens: not a request/response to fuzz.
NOT_FUZZED = {"/v1/events"}
# docs/reliability.md's figure for a CI run (FERRY_FUZZ_EXAMPLES=40): EXAMPLES requests for
# each operation that takes input, and one for each that takes none (hypothesis has nothing
# to vary), over the 40 fuzzed operations of docs/api/openapi.json (all but the event
# stream; the operator tokens, whoami, the audit trail and the host keys among them):
# 36 x 40 + 4 = 1444.
DOCUMENTED_REQUESTS = 1444
SENT: collections.Counter[str] = collections.Counter()
STATUSES: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)


class Gateway:
    """A gateway (no services: nothing moves unless the fuzz moves it) in a thread of its own,
    so that schemathesis's synchronous client can call it; seeded with a group whose VMs hold
    tokens and rendered scripts."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = settings.gateway_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.host = Host(settings, [], gateway=True)
        self.vms: dict[str, uuid.UUID] = {}
        self.tokens: dict[str, str] = {}
        self.group_id: uuid.UUID | None = None

    def run(self, coroutine, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.run(self.host.start())
        answer = requests.post(f"{self.url}/v1/groups", data=THREE_VMS.format(group="shop"),
                               headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}, timeout=30)
        assert answer.status_code == 201, answer.text
        self.group_id = uuid.UUID(answer.json()["id"])
        self.run(self._seed())
        self.run(self.snapshot())

    async def _seed(self) -> None:
        async with self.host.pool.acquire() as conn:
            rows = await conn.fetch("SELECT name, id FROM vms WHERE group_id = $1", self.group_id)
            for row in rows:
                self.vms[row["name"]] = row["id"]
                self.tokens[str(row["id"])] = await Session(conn).tokens.issue(row["id"])
                await conn.execute("INSERT INTO vm_scripts (vm_id, script) VALUES ($1, $2)",
                                   row["id"], "#!/bin/bash\necho configured\n")

    async def snapshot(self) -> None:
        """Keep a copy of every table of the store as seeded (schema <schema>_seed), for
        restore()."""
        schema = self.settings.database_schema
        async with self.host.pool.acquire() as conn:
            self.tables = [row["table_name"] for row in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1"
                " AND table_type = 'BASE TABLE'", schema)]
            await conn.execute(f'CREATE SCHEMA "{schema}_seed"')
            for table in self.tables:
                await conn.execute(f'CREATE TABLE "{schema}_seed"."{table}" AS'
                                   f' SELECT * FROM "{schema}"."{table}"')

    async def restore(self) -> None:
        """The store as seeded again: each stateful scenario starts from the same gateway, so
        that hypothesis, replaying a scenario's first calls, meets the same answers (a token
        name free, the group not cancelled yet) and draws the same way; otherwise it reports
        its own data generation as flaky (FlakyStrategyDefinition)."""
        schema = self.settings.database_schema
        tables = ", ".join(f'"{schema}"."{table}"' for table in self.tables)
        async with self.host.pool.acquire() as conn, conn.transaction():
            # Rows go back as they were, ids included, in any order: no foreign key checks.
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(f"TRUNCATE {tables}")
            for table in self.tables:
                await conn.execute(f'INSERT INTO "{schema}"."{table}" OVERRIDING SYSTEM VALUE'
                                   f' SELECT * FROM "{schema}_seed"."{table}"')

    async def drop_snapshot(self) -> None:
        async with self.host.pool.acquire() as conn:
            await conn.execute(
                f'DROP SCHEMA IF EXISTS "{self.settings.database_schema}_seed" CASCADE')

    def stop(self) -> None:
        try:
            self.run(self.drop_snapshot())
            self.run(self.host.stop())
            self.run(remove_everything(self.settings))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tag = uuid.uuid4().hex[:10]
    port = free_port()
    settings = Settings(
        database_schema=f"t_{tag}", bus_prefix=f"t{tag}", retry_delays=(0.2, 0.4),
        gateway_port=port, gateway_url=f"http://127.0.0.1:{port}", operator_token=OPERATOR_TOKEN,
        gateway_plain_http=True,  # the VM side over HTTPS has tests of its own (test_tls_default)
        state_dir=tmp_path_factory.mktemp("fuzz") / "state", log_format="json",
        log_level="warning",
        # Every fuzzed request carries a token; the fuzz must not lock itself out, and a
        # long poll must not hold it up (both limits have tests of their own).
        gateway_auth_failures=1_000_000, gateway_long_poll_max_s=0.3,
        gateway_request_timeout_s=20.0,
    )
    server = Gateway(settings)
    server.start()
    yield server
    server.stop()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "gateway.json").write_text(json.dumps(
        {"examples_per_operation": EXAMPLES, "total": sum(SENT.values()),
         "requests": {label: {"sent": SENT[label], "statuses": dict(sorted(STATUSES[label].items()))}
                      for label in sorted(SENT)}}, indent=2) + "\n")


@pytest.fixture(scope="module")
def served_schema(gateway):
    document = requests.get(f"{gateway.url}/openapi.json", timeout=30).json()
    for path in NOT_FUZZED:
        document["paths"].pop(path)
    return schemathesis.openapi.from_dict(document)


def known_values(gateway: Gateway) -> dict[str, list[str]]:
    """Path parameter values that reach past the lookups (a fuzzed one mostly gets a 404)."""
    return {
        "vm_id": [str(v) for v in gateway.vms.values()],
        "group": ["shop", str(gateway.group_id), "shop\x00"],
        "service": topology().services,
        "name": ["migration-vmlinuz", "..", "index.html", "app.js", "a\x00b"],
        "archive_id": [str(uuid.uuid4()), "a\x00b"],
    }


def _labels() -> list[str]:
    """The operations of the checked-in document (the staleness test keeps it equal to the
    served one, which is what is fuzzed)."""
    document = json.loads((Path(__file__).resolve().parents[2] / "docs" / "api" /
                           "openapi.json").read_text())
    return [f"{method.upper()} {path}" for path, operations in document["paths"].items()
            for method in operations if path not in NOT_FUZZED]


@pytest.mark.parametrize("label", _labels())
def test_no_generated_request_makes_the_gateway_answer_5xx(label, served_schema, gateway):
    """Valid requests (positive mode) and invalid ones (negative mode: wrong types, missing or
    extra fields, out-of-range values) alike get an answer below 500."""
    operation = served_schema.find_operation_by_label(label)
    assert operation is not None, label
    security = {next(iter(s)) for s in operation.definition.raw.get("security", [])}
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))
    known = {name: values for name, values in known_values(gateway).items()
             if "{" + name + "}" in operation.path}
    # For each path parameter: a seeded value two times in three, else the generated one.
    picks = st.fixed_dictionaries({name: st.sampled_from([*values, *values, None])
                                   for name, values in known.items()})

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None,
                         derandomize=not RANDOM, suppress_health_check=list(HealthCheck),
                         phases=[Phase.explicit, Phase.generate], print_blob=True)
    @given(case=cases, pick=picks)
    def call(case, pick):
        for name, value in pick.items():
            if value is not None:
                case.path_parameters[name] = value
        vm_id = str((case.path_parameters or {}).get("vm_id", ""))
        vm_token = gateway.tokens.get(vm_id) or next(iter(gateway.tokens.values()))
        # The generated request with good credentials (the security tests try bad ones).
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() != "authorization"}
        if "operatorToken" in security:
            case.headers["Authorization"] = f"Bearer {OPERATOR_TOKEN}"
        elif "vmToken" in security:
            case.headers["Authorization"] = f"Bearer {vm_token}"
        if "bootToken" in security:
            case.query = {**(case.query or {}), "token": vm_token}
        response = case.call(base_url=gateway.url, timeout=30)
        SENT[label] += 1
        STATUSES[label][response.status_code] += 1
        assert response.status_code < 500, (
            f"{response.status_code} {response.text[:500]}\n{case.as_curl_command()}")

    call()
    wanted = EXAMPLES if takes_input(operation.definition.raw) else 1
    assert SENT[label] >= wanted, f"{label}: {SENT[label]} requests sent, {wanted} wanted"


def takes_input(operation: dict) -> bool:
    """Whether an operation has parameters or a body for the fuzz to vary."""
    return bool(operation.get("parameters") or operation.get("requestBody"))


def test_every_operation_was_fuzzed_and_the_documented_total_sent(served_schema):
    """Runs after the fuzz above (same module): every operation of the document was fuzzed,
    and at FERRY_FUZZ_EXAMPLES=40 the run sent at least the requests docs/reliability.md
    says."""
    assert set(SENT) == set(_labels()), set(_labels()) - set(SENT)
    if EXAMPLES == 40:
        assert sum(SENT.values()) >= DOCUMENTED_REQUESTS, sum(SENT.values())


# The stateful fuzz: FERRY_FUZZ_SCENARIOS sequences (default 30) of at most STEPS calls each,
# following the document's links (a submitted group's id into the calls on that group) and
# those schemathesis infers from the answers' schemas (a group's VMs into the VM calls).
SCENARIOS = int(os.environ.get("FERRY_FUZZ_SCENARIOS", "30"))
STEPS = 10
# docs/reliability.md's figure for a CI run (FERRY_FUZZ_SCENARIOS=30): at least this many
# requests sent, and at least this many of them by following a link from an earlier answer.
DOCUMENTED_STATEFUL = 200
DOCUMENTED_LINKED = 50
STATEFUL_SENT: collections.Counter[str] = collections.Counter()
STATEFUL_STATUSES: collections.Counter[int] = collections.Counter()


def test_no_sequence_of_linked_requests_makes_the_gateway_answer_5xx(served_schema, gateway):
    """schemathesis' stateful mode: scenarios of calls where a later call takes values from
    an earlier answer (submit a group, then show, resume, cancel it; list groups, then call
    a listed VM), in positive and negative mode, all answered below 500."""
    linked = []

    class Machine(served_schema.as_state_machine()):
        def setup(self):
            gateway.run(gateway.restore())

        def before_call(self, case):
            security = {next(iter(s)) for s in case.operation.definition.raw.get("security", [])}
            vm_id = str((case.path_parameters or {}).get("vm_id", ""))
            vm_token = gateway.tokens.get(vm_id) or next(iter(gateway.tokens.values()))
            case.headers = {k: v for k, v in (case.headers or {}).items()
                            if k.lower() != "authorization"}
            if "operatorToken" in security:
                case.headers["Authorization"] = f"Bearer {OPERATOR_TOKEN}"
            elif "vmToken" in security:
                case.headers["Authorization"] = f"Bearer {vm_token}"
            if "bootToken" in security:
                case.query = {**(case.query or {}), "token": vm_token}

        def step(self, input):
            if input.transition is not None and input.applied_parameters:
                # A value of an earlier answer put into this call by a link.
                linked.append(f"{input.case.method.upper()} {input.case.path}")
            return super().step(input)

        def get_call_kwargs(self, case):
            return {"base_url": gateway.url, "timeout": 30}

        def validate_response(self, response, case, **kwargs):
            label = f"{case.method.upper()} {case.path}"
            STATEFUL_SENT[label] += 1
            STATEFUL_STATUSES[response.status_code] += 1
            assert response.status_code < 500, (
                f"{response.status_code} {response.text[:500]}\n{case.as_curl_command()}")

    Machine.run(settings=hypothesis_settings(
        max_examples=SCENARIOS, stateful_step_count=STEPS, deadline=None, database=None,
        derandomize=not RANDOM, suppress_health_check=list(HealthCheck),
        phases=[Phase.generate], print_blob=True))
    total = sum(STATEFUL_SENT.values())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "gateway-stateful.json").write_text(json.dumps(
        {"scenarios": SCENARIOS, "steps": STEPS, "total": total, "linked": len(linked),
         "statuses": dict(sorted(STATEFUL_STATUSES.items())),
         "requests": dict(sorted(STATEFUL_SENT.items()))}, indent=2) + "\n")
    print(f"stateful fuzz: {total} requests, {len(linked)} following a link; "
          f"statuses {dict(sorted(STATEFUL_STATUSES.items()))}")
    if SCENARIOS == 30:
        assert total >= DOCUMENTED_STATEFUL, total
        assert len(linked) >= DOCUMENTED_LINKED, linked
