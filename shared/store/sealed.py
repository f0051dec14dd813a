"""The store's sealed secrets taken all together: sealing the clear values left from before
migration 011, checking the key file at the gateway's start, and re-sealing everything with a
new key (the rotation of docs/security.md). Each runs on a connection of its own under the
schema's migration lock, so two of them (or a migration) never interleave."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from cryptography.fernet import Fernet

from shared.logging import get_logger
from shared.secrets_key import SecretsKey, SecretsKeyError, make_key_file, write_keys
from shared.settings import Settings
from shared.store.db import connect, migration_lock

log = get_logger(__name__)

# Every sealed column, by table (whose rows have an `id`): a new kind of secret is added here
# and rotation re-seals it with the rest.
SEALED = {"groups": "sealed_replication_password"}
# Columns that held a secret in clear before migration 011, and the sealed column each moves to.
CLEAR = {("groups", "replication_password"): "sealed_replication_password"}
# A rotation re-seals until a pass finds nothing left under an old key (a gateway that sealed a
# value just before it saw the new key); more passes than this means something keeps using an
# old key, and the old keys are kept.
MAX_PASSES = 5


class Sealed:
    """The statements on every sealed value at once, in the caller's transaction."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def count(self) -> int:
        return sum([await self.conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE {column} IS NOT NULL")
            for table, column in SEALED.items()])

    async def newest(self) -> tuple[str, str] | None:
        """A sealed value (of the row updated last), and what it is, if any."""
        for table, column in SEALED.items():
            row = await self.conn.fetchrow(
                f"SELECT id, {column} AS value FROM {table} WHERE {column} IS NOT NULL"
                " ORDER BY updated_at DESC LIMIT 1")
            if row:
                return row["value"], f"{table} {row['id']}'s {column}"
        return None

    async def seal_clear(self, key: SecretsKey) -> int:
        """Seal the values still in clear and empty their clear column; how many."""
        done = 0
        for (table, clear), sealed in CLEAR.items():
            rows = await self.conn.fetch(
                f"SELECT id, {clear} AS value FROM {table} WHERE {clear} IS NOT NULL FOR UPDATE")
            await self.conn.executemany(
                f"UPDATE {table} SET {sealed} = $2, {clear} = NULL WHERE id = $1",
                [(row["id"], key.seal(row["value"])) for row in rows])
            done += len(rows)
        return done

    async def reseal(self, key: SecretsKey) -> int:
        """Seal again with the newest key every value it alone does not open; how many. The
        tables are locked against writes meanwhile, so a value written concurrently is seen by
        this pass or the next."""
        done = 0
        for table, column in SEALED.items():
            await self.conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
            rows = await self.conn.fetch(
                f"SELECT id, {column} AS value FROM {table} WHERE {column} IS NOT NULL")
            changed = []
            for row in rows:
                again = key.reseal(row["value"], what=f"{table} {row['id']}'s {column}")
                if again is not None:
                    changed.append((row["id"], again))
            await self.conn.executemany(
                f"UPDATE {table} SET {column} = $2 WHERE id = $1", changed)
            done += len(changed)
        return done


async def open_secrets_key(settings: Settings) -> SecretsKey:
    """The gateway's start-up: the key file, made (one new key, mode 0600) if missing while the
    store holds nothing sealed, then every clear value left from before migration 011 sealed.
    Raises SecretsKeyError when the file is missing but sealed values exist (a lost or
    misplaced key file: a new key would open none of them), is garbled, or does not open the
    newest sealed value (another installation's key file)."""
    path = settings.secrets_key_path
    conn = await connect(settings)
    try:
        async with migration_lock(conn, settings.database_schema):
            if not path.exists():
                sealed = await Sealed(conn).count()
                if sealed:
                    raise SecretsKeyError(
                        f"the secrets key file {path} does not exist, and the store holds "
                        f"{sealed} value{'' if sealed == 1 else 's'} sealed with it: restore it"
                        " (FERRY_SECRETS_KEY_FILE)")
                if make_key_file(path):
                    log.info("secrets key made", file=str(path))
            key = SecretsKey(path)
            newest = await Sealed(conn).newest()
            if newest:  # another installation's key file is refused at start, not at first use
                key.unseal(newest[0], what=f"the store's {newest[1]}")
            else:
                key.keys  # noqa: B018 - a garbled file too
            async with conn.transaction():
                sealed_now = await Sealed(conn).seal_clear(key)
            if sealed_now:
                log.info("clear secrets sealed", count=sealed_now)
    finally:
        await conn.close()
    return key


@dataclass(frozen=True)
class Rotated:
    resealed: int  # values sealed again with the new key
    sealed_clear: int  # values found in clear and sealed
    keys_dropped: int  # old keys removed from the file


async def rotate(settings: Settings) -> Rotated:
    """Add a new key in front of the key file, re-seal every value with it, then drop the old
    keys. A crash at any point loses nothing: the old keys stay in the file until every value
    opens with the new one, and running it again starts over with yet another key."""
    path = settings.secrets_key_path
    old = SecretsKey(path).keys
    conn = await connect(settings)
    try:
        async with migration_lock(conn, settings.database_schema):
            write_keys(path, [Fernet.generate_key(), *old])
            key = SecretsKey(path)
            resealed = sealed_clear = 0
            for _ in range(MAX_PASSES):
                async with conn.transaction():
                    sealed_clear += await Sealed(conn).seal_clear(key)
                    found = await Sealed(conn).reseal(key)
                    resealed += found
                    if found == 0:
                        # Still under the tables' lock: no value is written until the old keys
                        # are gone from the file.
                        write_keys(path, key.keys[:1])
                        return Rotated(resealed, sealed_clear, len(old))
            raise SecretsKeyError(
                f"values sealed with an old key kept arriving after {MAX_PASSES} passes; the "
                f"old keys are kept in {path}: run the rotation again")
    finally:
        await conn.close()
