"""Secrets stay where they belong: a whole journey on the real RabbitMQ and PostgreSQL, then
every log line, every stored event and VM message, every operator answer and every row of every
table of the store (as raw text) is searched for the group's replication password, the VMs'
tokens and the operator token."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from shared.logging import configure_logging, get_logger
from shared.settings import Settings
from tests.conftest import OPERATOR_TOKEN
from tests.integration.harness import THREE_VMS, Ferry, play_journey, start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


async def operator_answers(ferry: Ferry, group_id, vm_ids) -> dict[str, str]:
    """Every operator GET of this group, as text."""
    paths = ["/v1/groups", f"/v1/groups/{group_id}", f"/v1/groups/{group_id}/cutover",
             "/metrics", "/openapi.json",
             *(f"/v1/vms/{vm}/messages" for vm in vm_ids),
             *(f"/v1/dead-letters/{service}" for service in ("archiver", "creator"))]
    answers = {}
    for path in paths:
        async with ferry.operator.get(path) as response:
            assert response.status == 200, (path, await response.text())
            answers[path] = await response.text()
    return answers


async def test_no_secret_reaches_logs_events_or_operator_answers(settings, operator):
    """The replication password is only in the store and in the one answer made to carry it
    (a database VM's /replication); tokens only in what the VMs were booted with."""
    configure_logging(Settings(log_format="json", log_level="debug"))
    ferry = await start_ferry(settings, operator)
    try:
        with capture_logs() as logs:
            group_id = await ferry.submit(THREE_VMS.format(group="shop"))
            await play_journey(ferry, group_id)
            await ferry.wait_group(group_id, "ready")
            ids = await ferry.vm_ids(group_id)
            async with ferry.vm(ids["db2"]) as replica:
                handed = await replica.replication()
            answers = await operator_answers(ferry, group_id, ids.values())
        password = await ferry.replication_password(group_id)
        tables = await raw_tables(ferry.pool, settings.database_schema)
        tokens = {name: ferry.token(vm) for name, vm in ids.items()}
        stored = {
            "events": [r["body"] for r in await ferry.pool.fetch("SELECT body::text FROM outbox")],
            "vm messages": [r["text"] for r in await ferry.pool.fetch(
                "SELECT text FROM vm_messages")],
            "transitions": [json.dumps(dict(r), default=str) for r in await ferry.pool.fetch(
                "SELECT * FROM vm_transitions")],
        }
    finally:
        await ferry.host.stop()
        configure_logging(Settings(log_format="json", log_level="warning"))

    # The search can find what it looks for: the secrets are real and where they must be.
    assert password and len(password) >= 16 and handed["password"] == password
    assert len(logs) >= 20 and len(stored["events"]) >= 20
    secrets = {"replication password": password, "operator token": OPERATOR_TOKEN,
               **{f"{name}'s token": token for name, token in tokens.items()}}
    # A bytea column's bytes are spelled in hex in the tables' text.
    secrets |= {f"{what} (as bytes)": secret.encode().hex() for what, secret in secrets.items()}
    places = {"logs": [repr(entry) for entry in logs], **stored, **tables,
              **{f"answer {path}": [text] for path, text in answers.items()}}
    assert len(tables) >= 10 and any("sealed_replication_password" in row
                                     for row in tables["table groups"])
    assert leaks(secrets, places) == []


async def raw_tables(pool, schema: str) -> dict[str, list[str]]:
    """Every row of every table of the test's schema, as PostgreSQL spells the whole row
    (text, jsonb and bytea columns alike), found from the catalogue rather than a list."""
    names = [r["table_name"] for r in await pool.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = $1 AND table_type = 'BASE TABLE'", schema)]
    return {f"table {name}": [r["row"] for r in await pool.fetch(
        f"SELECT to_jsonb(t)::text AS row FROM {schema}.{name} t")] for name in names}


def leaks(secrets: dict[str, str], places: dict[str, list[str]]) -> list[str]:
    """"<secret> in <place>" for every secret found in any text of a place."""
    return [f"{what} in {where}" for what, secret in secrets.items()
            for where, texts in places.items() if any(secret in text for text in texts)]


def test_the_search_reports_a_password_added_to_a_log_line():
    """The search itself can fail: a log line that carries the password (as a field, or
    inside the message) is reported, as the journey's logs are searched; a line without it
    is not."""
    password = "Zq3-replication-secret-7781"
    log = get_logger("services.provisioner.handlers")
    configure_logging(Settings(log_format="json", log_level="debug"))  # as the journey logs
    try:
        with capture_logs() as clean:
            log.info("replica set up", master="db1", user="ferry_repl")
        with capture_logs() as leaky:
            log.info("replica set up", master="db1", user="ferry_repl", password=password)
            log.debug(f"CHANGE MASTER TO MASTER_PASSWORD='{password}'")
    finally:
        configure_logging(Settings(log_format="json", log_level="warning"))
    secrets = {"replication password": password, "operator token": OPERATOR_TOKEN}
    assert len(clean) == 1 and len(leaky) == 2  # captured at info and debug alike
    assert leaks(secrets, {"logs": [repr(entry) for entry in clean]}) == []
    for entry in leaky:
        assert leaks(secrets, {"logs": [repr(entry)]}) == ["replication password in logs"]
