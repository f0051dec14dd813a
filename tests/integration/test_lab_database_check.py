"""The lab's database check (lab/checks.py database_rows) against this machine's MariaDB: two
copies of the example shop database stand for the legacy master and a new VM. The check
compares what the rows hold, not how many there are."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from lab.checks import CheckFailed, database_rows

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
    found = await database_rows(NewVm(legacy, copy), legacy_run, "db1", [legacy])
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
        await database_rows(NewVm(legacy, copy), legacy_run, "db1", [legacy])


async def test_a_missing_table_fails(copies):
    legacy, copy = copies
    await sql(copy, "DROP TABLE orders")
    with pytest.raises(CheckFailed, match=r"tables \['products'\], the legacy master has"):
        await database_rows(NewVm(legacy, copy), legacy_run, "db1", [legacy])
