"""Database engines behind one interface (design.md, "Database engines"): what differs between
MariaDB, MySQL and PostgreSQL lives in one module per engine (MariaDB and MySQL share
mysql_family.py, and speak what their server's version does: mysql_versions.py), and every part
that deals with databases (the archiver, the configurator's scripts, the gateway's master route,
the cutover) asks `engine(name)` instead of comparing names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from shared.databases.base import (
    DatabaseSource, DumpError, Engine, Position, ReplicaStatus, Unsupported, VersionUnknown,
    database_source,
)
from shared.databases.mariadb import MariaDB
from shared.databases.mysql import MySQL
from shared.databases.mysql_versions import UnsupportedVersion
from shared.databases.postgresql import PostgreSQL

if TYPE_CHECKING:
    from shared.plan import VM, DatabaseSpec, Plan

__all__ = [
    "DEFAULT", "ENGINES", "DatabaseSource", "DumpError", "Engine", "Position", "ReplicaStatus",
    "Unsupported", "UnsupportedVersion", "VersionUnknown", "by_family", "database_source",
    "engine", "engine_of", "rebuild_engine", "rebuild_engines", "titles",
]

ENGINES: dict[str, Engine] = {e.name: e for e in (MariaDB(), MySQL(), PostgreSQL())}
# A database VM that names no database of its own (nor through its master) runs this one.
DEFAULT: Engine = ENGINES[MariaDB.name]


def engine(name: str) -> Engine:
    """The engine a plan calls `name`."""
    try:
        return ENGINES[name]
    except KeyError:
        raise Unsupported(f"unknown engine {name!r}") from None


def engine_of(vm: VM, plan: Plan | None = None) -> Engine:
    """The engine of a VM's database server: its first database's; for a replica without
    databases of its own, its master's (`plan` needed); else DEFAULT."""
    if vm.databases:
        return engine(vm.databases[0].engine)
    if plan is not None and vm.replica_of:
        return engine_of(plan.vm(vm.replica_of))
    return DEFAULT


def rebuild_engine(vm: VM, plan: Plan | None = None) -> Engine:
    """The engine whose server a rebuilt database VM gets: its own where Ferryman can load
    dumps into it, else DEFAULT (and the VM's dumps stay where they are, to be restored by
    hand, which local.start says)."""
    found = engine_of(vm, plan)
    return found if found.rebuilds else DEFAULT


def rebuild_engines(vm: VM, plan: Plan | None = None) -> list[Engine]:
    """Every server a rebuilt database VM gets, each once, in the order of its databases (its
    master's for a replica without databases of its own): a VM may hold MariaDB or MySQL and
    PostgreSQL. One MariaDB or MySQL server at most (the first of its databases' engines);
    without one, and without PostgreSQL, DEFAULT's, as rebuild_engine."""
    specs = vm.databases
    if not specs and plan is not None and vm.replica_of:
        specs = plan.vm(vm.replica_of).databases
    found: list[Engine] = []
    for spec in specs:
        server = engine(spec.engine)
        if server.rebuilds and server.family not in {other.family for other in found}:
            found.append(server)
    return found or [DEFAULT]


def by_family(specs: Iterable[DatabaseSpec]) -> list[list[DatabaseSpec]]:
    """A master's databases grouped by their engine's family (one server each: MariaDB or
    MySQL, PostgreSQL), in the order the plan names them."""
    families: dict[str, list[DatabaseSpec]] = {}
    for spec in specs:
        families.setdefault(engine(spec.engine).family, []).append(spec)
    return list(families.values())


def titles(engines: Iterable[Engine]) -> str:
    """ "MariaDB", "MariaDB and PostgreSQL": for messages saying what is supported."""
    names = [e.title for e in engines]
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else "none"
