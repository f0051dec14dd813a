"""The lab's database checks (lab/checks.py database_rows, postgresql_roles) against this
machine's MariaDB and PostgreSQL: two copies of the example shop database (and of the stock
database) stand for the legacy master and a new VM. The checks compare what the rows hold,
not how many there are, and who owns what."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from lab.checks import CheckFailed, database_rows, postgresql_roles

pytestmark = [pytest.mark.integration]

SHOP_SQL = Path(__file__).resolve().parents[2] / "examples" / "legacy" / "shop.sql"


async def run(*argv: str, stdin: bytes | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        raise CheckFailed(f"{argv[:3]} exited {proc.returncode}: {err.decode()[-300:]}")
    return out.decode()


class NewVm:
    """The new VM's side of the check: its commands run here, on the copy of the database
    (the check names the legacy database; the copy has another name on this one server)."""

    def __init__(self, legacy: str, copy: str):
        self.legacy, self.copy = legacy, copy

    async def run(self, command: str) -> str:
        return await run("bash", "-c", command.replace(f"`{self.legacy}`", f"`{self.copy}`"))


async def legacy_run(host: str, argv: list[str]) -> str:
    assert host == "db1"
    return await run(*argv)


@pytest.fixture
async def copies():
    """The example shop database twice: as on the legacy master, and as restored."""
    names = [f"ferry_chk_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    try:
        for name in names:
            await run("mariadb", "-e", f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            await run("mariadb", name, stdin=SHOP_SQL.read_bytes())
        yield names
    finally:
        for name in names:
            await run("mariadb", "-e", f"DROP DATABASE IF EXISTS `{name}`")


async def sql(database: str, statement: str) -> str:
    return await run("mariadb", "-N", "-B", database, "-e", statement)


async def test_identical_copies_pass_with_their_row_counts(copies):
    legacy, copy = copies
    found = await database_rows(NewVm(legacy, copy), legacy_run, "db1", "mariadb", [legacy])
    assert found == (f"{legacy}: orders 4 rows, products 3 rows, each table's rows identical "
                     "(sha256)")


async def test_a_changed_row_fails_though_every_count_matches(copies):
    """One customer's name differs on the new side: the same number of rows in every table
    (what the check used to compare), and the check fails naming the table."""
    legacy, copy = copies
    await sql(copy, "UPDATE orders SET customer = 'Eve' WHERE customer = 'Ada'")
    for table in ("products", "orders"):
        assert await sql(legacy, f"SELECT COUNT(*) FROM {table}") == \
            await sql(copy, f"SELECT COUNT(*) FROM {table}")
    with pytest.raises(CheckFailed, match=rf"{legacy}\.orders: rows differ .*4 rows.*4 rows"):
        await database_rows(NewVm(legacy, copy), legacy_run, "db1", "mariadb", [legacy])


async def test_a_missing_table_fails(copies):
    legacy, copy = copies
    await sql(copy, "DROP TABLE orders")
    with pytest.raises(CheckFailed, match=r"tables \['products'\], the legacy master has"):
        await database_rows(NewVm(legacy, copy), legacy_run, "db1", "mariadb", [legacy])


# --- PostgreSQL: the example stock database, from examples/legacy/stock.sql ---------------------

STOCK_SQL = SHOP_SQL.with_name("stock.sql")


class NewPgVm:
    """The new VM's side against this machine's PostgreSQL: its commands run here as root (psql
    as postgres, like on a VM), on the copy; what they print names the legacy database, as the
    VM's own would."""

    def __init__(self, legacy: str, copy: str):
        self.legacy, self.copy = legacy, copy

    async def run(self, command: str) -> str:
        out = await run("bash", "-c", command.replace(f"-d {self.legacy}", f"-d {self.copy}"))
        return out.replace(self.copy, self.legacy)


async def pg(database: str, statement: str) -> str:
    return await run("runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-v",
                     "ON_ERROR_STOP=1", "-d", database, "-c", statement)


@pytest.fixture
async def pg_copies():
    """The example stock database twice, its role under a name of this test's own (roles are
    the whole cluster's, and this machine's is shared)."""
    suffix = uuid.uuid4().hex[:10]
    names, role = [f"ferry_chk_{suffix}_{n}" for n in range(2)], f"ferry_chk_{suffix}"
    sql = STOCK_SQL.read_bytes().replace(b"stock_app", role.encode())
    try:
        for name in names:
            await pg("postgres", f"CREATE DATABASE {name}")
            await run("runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v",
                      "ON_ERROR_STOP=1", "-d", name, stdin=sql)
        yield names, role
    finally:
        for name in names:
            await pg("postgres", f"DROP DATABASE IF EXISTS {name}")
        await pg("postgres", f"DROP ROLE IF EXISTS {role}")


async def test_postgresql_copies_pass_with_their_row_counts_roles_and_owners(pg_copies):
    (legacy, copy), role = pg_copies
    found = await database_rows(NewPgVm(legacy, copy), legacy_run, "db1", "postgresql", [legacy])
    assert found == (f"{legacy}: public.items 40 rows, public.movements 400 rows, each table's "
                     "rows identical (md5)")
    found = await postgresql_roles(NewPgVm(legacy, copy), legacy_run, "db1", [legacy])
    assert f"login: {role}" in found
    assert (f"database {legacy} owned by {role}; table public.items owned by {role}; "
            f"table public.movements owned by {role}") in found


async def test_a_changed_postgresql_row_fails_though_the_counts_match(pg_copies):
    (legacy, copy), _ = pg_copies
    await pg(copy, "UPDATE items SET name = 'Spoon' WHERE sku = 'SKU-0003'")
    with pytest.raises(CheckFailed, match=rf"{legacy}\.public\.items: rows differ .*40 rows, "
                                          r"md5 \w+; the legacy master: 40 rows"):
        await database_rows(NewPgVm(legacy, copy), legacy_run, "db1", "postgresql", [legacy])


async def test_a_table_of_another_owner_fails_the_roles_check(pg_copies):
    (legacy, copy), role = pg_copies
    await pg(copy, "ALTER TABLE movements OWNER TO postgres")
    with pytest.raises(CheckFailed, match=f"table public.movements owned by postgres.*on the "
                                          f"legacy master .*table public.movements owned by "
                                          f"{role}"):
        await postgresql_roles(NewPgVm(legacy, copy), legacy_run, "db1", [legacy])
