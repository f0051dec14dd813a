"""Secrets at rest, against the real PostgreSQL and RabbitMQ: the gateway's start seals the
clear passwords left from before migration 011 and makes the key file; the documented rotation
command re-seals every value with a new key while the gateway keeps serving; a rotation cut
short loses nothing; a lost or wrong key file is a clear error, never a clear-text fallback."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import uuid

import pytest
from cryptography.fernet import Fernet, InvalidToken

from shared.providers.base import BootSource
from shared.secrets_key import SecretsKey, SecretsKeyError, read_keys, write_keys
from shared.store.db import open_pool
from shared.store.sealed import open_secrets_key
from shared.store.session import Session
from tests.integration.harness import REPO, THREE_VMS, start_ferry
from tests.integration.test_secrets import leaks, raw_tables

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


async def rotate_by_command(settings) -> tuple[int, str, str]:
    """`python -m services.secrets_key rotate`, as an operator runs it, with the test's
    database schema and state dir."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "FERRY_DATABASE_URL": settings.database_url,
           "FERRY_DATABASE_SCHEMA": settings.database_schema,
           "FERRY_STATE_DIR": str(settings.state_dir)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.secrets_key", "rotate", env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def sealed_values(pool) -> dict[uuid.UUID, str]:
    return {r["id"]: r["sealed_replication_password"] for r in await pool.fetch(
        "SELECT id, sealed_replication_password FROM groups")}


def opens_with(key: bytes, sealed: str) -> str | None:
    try:
        return Fernet(key).decrypt(sealed.encode()).decode()
    except InvalidToken:
        return None


async def test_rotation_reseals_every_value_with_a_new_key_while_the_gateway_serves(
        settings, operator):
    """The command adds a key, re-seals both groups' passwords with it and drops the old key;
    the running gateway still hands the same password to a database VM and seals a new group
    with the new key; run again, it re-seals all three and every password is unchanged."""
    ferry = await start_ferry(settings, operator)
    try:
        groups = [await ferry.submit(THREE_VMS.format(group=name)) for name in ("shop", "ledger")]
        passwords = {g: await ferry.replication_password(g) for g in groups}
        path = settings.secrets_key_path
        old_keys, before = read_keys(path), await sealed_values(ferry.pool)
        assert all(opens_with(old_keys[0], before[g]) == passwords[g] for g in groups)

        code, out, err = await rotate_by_command(settings)
        assert code == 0, err
        assert f"{path}: new key; 2 values re-sealed with it; 1 old key dropped" in out, out
        new_keys, after = read_keys(path), await sealed_values(ferry.pool)
        assert len(new_keys) == 1 and new_keys[0] not in old_keys
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for g in groups:
            assert opens_with(new_keys[0], after[g]) == passwords[g]
            assert opens_with(old_keys[0], after[g]) is None

        db1 = (await ferry.vm_ids(groups[0]))["db1"]
        await ferry.wait_booted(db1, BootSource.NETWORK)
        async with ferry.vm(db1) as vm:
            assert (await vm.replication())["password"] == passwords[groups[0]]
        third = await ferry.submit(THREE_VMS.format(group="third"))
        assert opens_with(new_keys[0], (await sealed_values(ferry.pool))[third])

        code, out, err = await rotate_by_command(settings)
        assert code == 0 and "3 values re-sealed" in out, (out, err)
        assert read_keys(path)[0] not in new_keys
        for g, password in passwords.items():
            assert await ferry.replication_password(g) == password
    finally:
        await ferry.host.stop()


async def test_a_rotation_cut_short_loses_nothing_and_the_next_one_finishes(settings, operator):
    """A crash after the new key was written and before the re-seal committed leaves the file
    with both keys and the values under the old one: the gateway still serves them, and the
    next rotation re-seals them and drops both earlier keys."""
    ferry = await start_ferry(settings, operator)
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        password = await ferry.replication_password(group_id)
        path = settings.secrets_key_path
        old = read_keys(path)
        write_keys(path, [Fernet.generate_key(), *old])  # where the crash left it
        db1 = (await ferry.vm_ids(group_id))["db1"]
        await ferry.wait_booted(db1, BootSource.NETWORK)
        async with ferry.vm(db1) as vm:
            assert (await vm.replication())["password"] == password

        code, out, err = await rotate_by_command(settings)
        assert code == 0 and "1 value re-sealed with it; 2 old keys dropped" in out, (out, err)
        key = read_keys(path)
        assert len(key) == 1
        assert opens_with(key[0], (await sealed_values(ferry.pool))[group_id]) == password
    finally:
        await ferry.host.stop()


async def test_the_gateways_start_seals_the_clear_passwords_left_from_before(settings):
    """A group stored in clear (as before migration 011) is found by the raw-table search; the
    gateway's start-up makes the key file (0600), seals the password and empties the clear
    column, after which the search finds it nowhere; a second start changes nothing."""
    pool = await open_pool(settings)
    try:
        group_id, clear = uuid.uuid4(), "clear-from-before-" + uuid.uuid4().hex
        await pool.execute(
            "INSERT INTO groups (id, name, plan, replication_password) VALUES ($1, 'old', '{}', $2)",
            group_id, clear)
        found = {"replication password": clear}
        tables = await raw_tables(pool, settings.database_schema)
        assert leaks(found, tables) == ["replication password in table groups"]

        assert not settings.secrets_key_path.exists()
        key = await open_secrets_key(settings)
        assert stat.S_IMODE(settings.secrets_key_path.stat().st_mode) == 0o600
        row = await pool.fetchrow("SELECT * FROM groups WHERE id = $1", group_id)
        assert row["replication_password"] is None
        assert key.unseal(row["sealed_replication_password"]) == clear
        assert leaks(found, await raw_tables(pool, settings.database_schema)) == []

        await open_secrets_key(settings)
        assert (await sealed_values(pool))[group_id] == row["sealed_replication_password"]
    finally:
        await pool.close()


async def test_a_lost_or_wrong_key_file_is_an_error_naming_it(settings, operator):
    """With the key file gone, the gateway refuses to start (no new key is made over the sealed
    values) and the rotation command exits 1 naming the file; with another key in its place, the
    gateway refuses to start and a password cannot be unsealed, each error naming the file,
    never the value."""
    ferry = await start_ferry(settings, operator)
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        sealed = (await sealed_values(ferry.pool))[group_id]
    finally:
        await ferry.host.stop()
    path = settings.secrets_key_path
    path.unlink()
    with pytest.raises(SecretsKeyError) as caught:
        await open_secrets_key(settings)
    assert str(path) in str(caught.value) and "holds 1 value sealed" in str(caught.value)
    assert not path.exists()
    code, out, err = await rotate_by_command(settings)
    assert code == 1 and f"{path} does not exist" in err, (out, err)

    write_keys(path, [Fernet.generate_key()])
    with pytest.raises(SecretsKeyError) as caught:  # the gateway's start
        await open_secrets_key(settings)
    assert str(path) in str(caught.value) and "does not hold" in str(caught.value)
    pool = await open_pool(settings)
    try:
        async with pool.acquire() as conn:
            with pytest.raises(SecretsKeyError) as caught:
                await Session(conn, SecretsKey(path)).groups.replication_password(group_id)
    finally:
        await pool.close()
    assert str(path) in str(caught.value) and sealed not in str(caught.value)
