"""What the lab checks on the rebuilt VMs themselves, over SSH on their group's network.

The VMs are reached as an operator would reach them: `ssh root@<planned address>` from this
machine (the hypervisor holds the group network's gateway address), with the identity the
archiver used on the legacy hosts: its public key travelled in the legacy root archives.
Every check compares what the VM has with what the plan asked for or what the legacy host has.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from shared.plan import VM, Plan, Role
from shared.proc import CommandError, run

# Runs argv on a legacy host (the lab's legacy site) and returns its stdout.
LegacyRun = Callable[[str, list[str]], Awaitable[str]]

SSH_TIMEOUT_S = 120
REPLICATION_WAIT_S = 120
LV_SIZE_SLACK_MIB = 8  # LVM rounds each LV up to whole 4 MiB extents


@dataclass(frozen=True)
class Check:
    vm: str
    what: str
    ok: bool
    detail: str


class CheckFailed(Exception):
    pass


class VmShell:
    """Commands on one rebuilt VM, over `ssh root@<address>`."""

    def __init__(self, address: str, identity: Path):
        self.address = address
        self.identity = identity

    def argv(self, command: str) -> list[str]:
        # The VMs are new and their host keys were made on first boot: there is nothing to
        # pin them to, and the group's network is reachable from this machine only.
        return ["ssh", "-i", str(self.identity),
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=10", f"root@{self.address}", command]

    async def run(self, command: str, timeout: float = SSH_TIMEOUT_S) -> str:
        try:
            done = await run(self.argv(command), check=False, timeout=timeout, what="ssh")
        except (CommandError, OSError) as exc:  # ssh missing, or the command outran its timeout
            raise CheckFailed(f"{self.address}: {exc}") from None
        if done.returncode != 0:
            raise CheckFailed(f"{self.address}: `{command}` exited {done.returncode}: "
                              f"{done.stderr_tail(400)}")
        return done.stdout.decode(errors="replace")


# --- the checks --------------------------------------------------------------------------------

async def lvm_layout(shell: VmShell, vm: VM) -> str:
    """One LV per planned filesystem in VG `local`, each at least its planned size."""
    out = await shell.run("lvs --noheadings --nosuffix --units m --separator , "
                          "-o lv_name,lv_size local")
    found = {name.strip(): float(size) for name, size in
             (line.split(",") for line in out.split() if line.strip())}
    wanted = {fs.lv_name: fs.size_gb * 1024 for fs in vm.logical_volumes}
    if set(found) != set(wanted):
        raise CheckFailed(f"LVs {sorted(found)}, planned {sorted(wanted)}")
    for name, mib in wanted.items():
        if not mib <= found[name] + 0.5 <= mib + LV_SIZE_SLACK_MIB + 1:
            raise CheckFailed(f"LV {name} is {found[name]:.0f} MiB, planned {mib:.0f} MiB")
    return ", ".join(f"{n} {found[n]:.0f}M" for n in sorted(found))


# Ferryman's disk serials (shared.providers.base.disk_serial): fm<12 hex of the VM id>d<index>.
DISK_SERIAL = re.compile(r"^fm[0-9a-f]{12}d(\d+)$")
DEVICE_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd"}


async def planned_disks(shell: VmShell, vm: VM) -> str:
    """Each planned disk is in the VM, by its serial, in plan order, with its planned size and
    named as its bus names disks (vdX on virtio, sdX on SCSI and SATA)."""
    out = await shell.run("lsblk -dnbo NAME,SIZE,SERIAL")
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and (serial := DISK_SERIAL.match(parts[2])):
            found[int(serial.group(1))] = (parts[0], int(parts[1]))
    if sorted(found) != list(range(len(vm.disks))):
        raise CheckFailed(f"disks with Ferryman's serials: {sorted(found)}, planned "
                          f"{len(vm.disks)}: {out.strip()}")
    seen = []
    for index, disk in enumerate(vm.disks):
        name, size = found[index]
        if not name.startswith(DEVICE_PREFIX[disk.bus]) or size != disk.size_gb * 1024 ** 3:
            raise CheckFailed(f"disk {index} is {name} of {size} bytes, planned {disk.size_gb} "
                              f"GiB on {disk.bus}")
        seen.append(f"{name} ({disk.bus}, {disk.size_gb}G)")
    return ", ".join(seen)


# /boot: the first partition of a disk on virtio (vdX) or on SCSI or SATA (sdX), whichever
# the first planned disk is (fstab names it by UUID).
BOOT_PARTITION = re.compile(r"^/dev/(vd|sd)[a-z]+1$")


async def filesystems(shell: VmShell, vm: VM) -> str:
    """Every planned filesystem mounted where planned, with its type, on its LV (or /boot on
    a first partition), and swap in use."""
    out = await shell.run("findmnt -rn -o TARGET,SOURCE,FSTYPE; echo ---; "
                          "swapon --noheadings --show=NAME; echo ---; "
                          "readlink -f /dev/local/swap 2>/dev/null || true")
    mounts_text, swaps, swap_dev = (part.split() for part in out.split("---\n"))
    mounts = {}
    for target, source, fstype in zip(mounts_text[::3], mounts_text[1::3], mounts_text[2::3]):
        mounts[target] = (source, fstype)
    seen = []
    for fs in [vm.boot, *vm.logical_volumes]:
        if fs.type == "swap":
            if not swap_dev or swap_dev[0] not in swaps:
                raise CheckFailed(f"swap LV not in use (swaps: {swaps})")
            seen.append("swap")
            continue
        source, fstype = mounts.get(fs.mount, (None, None))
        if fs.mount == "/boot":
            planned = "/dev/vdX1 or /dev/sdX1"
            where = bool(source and BOOT_PARTITION.match(source))
        else:
            # An LV has two names: the kernel's root= gives /dev/local/root, fstab the mapper name.
            names = {f"/dev/local/{fs.lv_name}", f"/dev/mapper/local-{fs.lv_name}"}
            planned, where = " or ".join(sorted(names)), source in names
        if fstype != fs.type or not where:
            raise CheckFailed(f"{fs.mount}: {source} {fstype}, planned {planned} {fs.type}")
        seen.append(f"{fs.mount} {fstype}")
    return ", ".join(seen)


async def migrating_marker(shell: VmShell, vm: VM) -> str:
    out = await shell.run("cat /etc/ferryman/migrating")
    return out.strip().splitlines()[-1]


SHA_LISTING = "cd {path} && find . -type f -print0 | sort -z | xargs -0 -r sha256sum"


def _listing(text: str) -> dict[str, str]:
    files = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        files[name.removeprefix("./")] = digest
    return files


def _excluded(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p.rstrip("/") + "/*")
               for p in patterns)


async def data_tree(shell: VmShell, vm: VM, legacy_run: LegacyRun) -> str:
    """Each archived path other than / holds, file for file, what the legacy host holds there
    (minus the plan's excludes): same names, same sha256."""
    checked = []
    for archive in vm.archives:
        if archive.path == "/":
            continue
        command = SHA_LISTING.format(path=shlex.quote(archive.path))
        new = _listing(await shell.run(command))
        old = {name: digest for name, digest in
               _listing(await legacy_run(vm.name, ["sh", "-c", command])).items()
               if not _excluded(name, list(archive.excludes))}
        if new != old:
            missing = sorted(set(old) - set(new))[:5]
            extra = sorted(set(new) - set(old))[:5]
            changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])[:5]
            raise CheckFailed(f"{archive.path} differs: missing {missing}, extra {extra}, "
                              f"changed {changed}")
        checked.append(f"{archive.path}: {len(new)} files identical")
    return "; ".join(checked) or "no archived paths besides /"


# --- databases, each engine read with its own client --------------------------------------------

# Runs a bash command on one side (the legacy master, or a new VM) and returns its stdout.
SideRun = Callable[[str], Awaitable[str]]


def _sql(query: str) -> str:
    return f"mariadb -N -B -e {shlex.quote(query)}"


def table_digest_command(database: str, table: str, columns: int) -> str:
    """A bash command that prints the sha256 of a table's rows, in a fixed order (by every
    column) as the client prints them (tab-separated, binary escaped), then its row count."""
    order = ", ".join(str(n) for n in range(1, columns + 1))
    rows = _sql(f"SELECT * FROM `{database}`.`{table}` ORDER BY {order}")
    count = _sql(f"SELECT COUNT(*) FROM `{database}`.`{table}`")
    return f"set -o pipefail; {rows} | sha256sum | cut -d' ' -f1; {count}"


class MariaDbReader:
    """MariaDB, through the `mariadb` client as root (the socket lets root in)."""

    title = "MariaDB"
    digest_name = "sha256"

    async def tables(self, run: SideRun, database: str) -> list[str]:
        return (await run(_sql(f"SHOW TABLES FROM `{database}`"))).split()

    async def digest(self, run: SideRun, database: str, table: str) -> tuple[str, str]:
        columns = int(await run(_sql(
            "SELECT COUNT(*) FROM information_schema.COLUMNS"
            f" WHERE TABLE_SCHEMA = '{database}' AND TABLE_NAME = '{table}'")))
        digest, count = (await run(table_digest_command(database, table, columns))).split()
        return digest, count

    async def replica_state(self, run: SideRun) -> str:
        status = await run("mariadb -e 'SHOW SLAVE STATUS\\G'")
        fields = {}
        for line in status.splitlines():
            name, colon, value = line.partition(":")
            if colon:
                fields[name.strip()] = value.strip()
        running = [fields.get(f"Slave_{thread}_Running") for thread in ("IO", "SQL")]
        if running != ["Yes", "Yes"]:
            raise CheckFailed(f"not replicating: Slave_IO_Running {running[0]}, "
                              f"Slave_SQL_Running {running[1]}, last error "
                              f"{fields.get('Last_Error') or fields.get('Last_IO_Error')!r}")
        return f"replica of {fields.get('Master_Host')}, both threads running"

    def write_arrival(self, tag: str) -> str:
        return _sql("CREATE DATABASE IF NOT EXISTS ferry_check; CREATE TABLE IF NOT EXISTS "
                    "ferry_check.arrivals (tag VARCHAR(64) PRIMARY KEY); "
                    f"INSERT INTO ferry_check.arrivals VALUES ('{tag}')")

    def count_arrival(self, tag: str) -> str:
        return _sql(f"SELECT COUNT(*) FROM ferry_check.arrivals WHERE tag = '{tag}'")


def psql(database: str, *statements: str) -> str:
    """A bash command running each statement with psql as the cluster's superuser (the
    postgres OS user, let in through the socket by peer authentication), unaligned, rows only."""
    commands = " ".join(f"-c {shlex.quote(statement)}" for statement in statements)
    return (f"runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 "
            f"-d {shlex.quote(database)} {commands}")


# Rows as text the same way on both sides whatever each cluster's settings (timestamps in the
# session's time zone, dates in its style).
_PG_SESSION = ("SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, YMD'",
               "SET IntervalStyle = 'postgres'")
# Roles of the legacy cluster, with what they may do and a digest of their password (the
# verifier itself is never printed): the built-in pg_* roles and the bootstrap superuser
# (oid 10, made by each cluster's initdb) aside.
_PG_ROLES = ("SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,"
             " rolbypassrls, coalesce(md5(rolpassword), 'no password') FROM pg_authid"
             " WHERE rolname !~ '^pg_' AND oid <> 10 ORDER BY 1")


class PostgreSqlReader:
    """PostgreSQL, through psql as the postgres OS user."""

    title = "PostgreSQL"
    digest_name = "md5"

    async def tables(self, run: SideRun, database: str) -> list[str]:
        return (await run(psql(database, "SELECT format('%I.%I', schemaname, tablename) "
                               "FROM pg_tables WHERE schemaname NOT IN "
                               "('pg_catalog', 'information_schema') ORDER BY 1"))).split()

    async def digest(self, run: SideRun, database: str, table: str) -> tuple[str, str]:
        # Each row as its text, in the order of those texts (the database's collation, the
        # same on both sides: pg_restore --create keeps it).
        query = (f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                 f"|| ' ' || count(*) FROM {table} AS t")
        digest, count = (await run(psql(database, *_PG_SESSION, query))).split()
        return digest, count

    async def roles(self, run: SideRun, databases: list[str]) -> tuple[set[str], list[str]]:
        """The cluster's roles (one line each) and, per database, its owner and its tables'."""
        roles = set((await run(psql("postgres", _PG_ROLES))).splitlines())
        owners = []
        for database in databases:
            owners += (await run(psql(database, (
                "SELECT format('database %s owned by %s', datname, pg_get_userbyid(datdba)) "
                "FROM pg_database WHERE datname = current_database() UNION ALL "
                "SELECT format('table %I.%I owned by %s', schemaname, tablename, tableowner) "
                "FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
                " ORDER BY 1")))).splitlines()
        return roles, owners

    async def replica_state(self, run: SideRun) -> str:
        state = (await run(psql("postgres", "SELECT pg_is_in_recovery()::text || ' ' || "
                                "coalesce((SELECT status || ' ' || sender_host FROM "
                                "pg_stat_wal_receiver), 'no-receiver')"))).split()
        if state[:2] != ["true", "streaming"]:
            raise CheckFailed(f"not a streaming standby: pg_is_in_recovery() "
                              f"{state[0] if state else '?'}, WAL receiver "
                              f"{' '.join(state[1:]) or '?'}")
        return f"a standby (in recovery), its WAL receiver streaming from {state[2]}"

    def write_arrival(self, tag: str) -> str:
        # In the maintenance database: none of the group's databases is touched.
        return psql("postgres", "CREATE TABLE IF NOT EXISTS ferry_check_arrivals "
                    "(tag text PRIMARY KEY)",
                    f"INSERT INTO ferry_check_arrivals VALUES ('{tag}')")

    def count_arrival(self, tag: str) -> str:
        return psql("postgres", f"SELECT count(*) FROM ferry_check_arrivals WHERE tag = '{tag}'")


# By the plan's engine name. MySQL has no lab server to check against (docs/legacy-hosts.md).
READERS = {"mariadb": MariaDbReader(), "postgresql": PostgreSqlReader()}


def reader(engine: str) -> MariaDbReader | PostgreSqlReader:
    try:
        return READERS[engine]
    except KeyError:
        raise CheckFailed(f"the lab has no check of {engine} databases") from None


def _legacy_side(legacy_run: LegacyRun, host: str) -> SideRun:
    return lambda command: legacy_run(host, ["bash", "-c", command])


async def database_rows(shell: VmShell, legacy_run: LegacyRun, master: str, engine: str,
                        databases: list[str]) -> str:
    """The VM holds the legacy master's rows of every table of each database of `engine`, row
    for row: the same tables, and per table the same digest of its ordered rows (and the same
    count) on both sides."""
    sql, legacy = reader(engine), _legacy_side(legacy_run, master)
    found = []
    for database in databases:
        tables = await sql.tables(legacy, database)
        new_tables = await sql.tables(shell.run, database)
        if sorted(new_tables) != sorted(tables):
            raise CheckFailed(f"{database}: tables {sorted(new_tables)}, the legacy master has "
                              f"{sorted(tables)}")
        counts = []
        for table in tables:
            old = await sql.digest(legacy, database, table)
            new = await sql.digest(shell.run, database, table)
            if new != old:
                raise CheckFailed(f"{database}.{table}: rows differ from the legacy master's "
                                  f"({new[1]} rows, {sql.digest_name} {new[0][:12]}; the "
                                  f"legacy master: {old[1]} rows, {sql.digest_name} "
                                  f"{old[0][:12]})")
            counts.append(f"{table} {new[1]} rows")
        found.append(f"{database}: {', '.join(counts)}, each table's rows identical "
                     f"({sql.digest_name})")
    return "; ".join(found)


async def postgresql_roles(shell: VmShell, legacy_run: LegacyRun, master: str,
                           databases: list[str]) -> str:
    """The legacy cluster's roles are on the VM with the same rights and the same password
    (its verifier's digest), and each database and table has the owner it had."""
    sql = PostgreSqlReader()
    old_roles, old_owners = await sql.roles(_legacy_side(legacy_run, master), databases)
    new_roles, new_owners = await sql.roles(shell.run, databases)
    old, new = _by_name(old_roles), _by_name(new_roles)
    wrong = [f"{name} missing" if name not in new else
             f"{name} has other rights or another password ({new[name][1:7]}, legacy "
             f"{old[name][1:7]})" for name in sorted(old) if new.get(name) != old[name]]
    if wrong:
        raise CheckFailed(f"roles not as on the legacy master: {'; '.join(wrong)}")
    if new_owners != old_owners:
        raise CheckFailed(f"owners {new_owners}, on the legacy master {old_owners}")
    logins = [name for name, fields in sorted(old.items()) if fields[4] == "t"]
    return (f"roles {', '.join(sorted(old)) or 'none'} as on the legacy master (login: "
            f"{', '.join(logins) or 'none'}; same password digests); owners as there: "
            f"{'; '.join(old_owners)}")


def _by_name(roles: set[str]) -> dict[str, list[str]]:
    """psql's unaligned role lines (name|rights...|password digest) by role name."""
    return {line.split("|")[0]: line.split("|") for line in roles}


async def replication(master: VmShell, replica: VmShell, engine: str = "mariadb") -> str:
    """The replica replicates from its master, as its server says, and a row written on the new
    master afterwards shows up on it (in a table of the check's own, so any group's databases
    will do and none of their tables is touched)."""
    sql = reader(engine)
    standing = await sql.replica_state(replica.run)
    tag = f"ferry-check-{uuid.uuid4().hex[:8]}"
    await master.run(sql.write_arrival(tag))
    started = time.monotonic()
    while time.monotonic() - started < REPLICATION_WAIT_S:
        if (await replica.run(sql.count_arrival(tag) + " 2>/dev/null || true")).strip() == "1":
            return (f"{standing}; row {tag} written on the master arrived in "
                    f"{time.monotonic() - started:.1f}s")
        await asyncio.sleep(0.5)
    try:
        now = await sql.replica_state(replica.run)
    except CheckFailed as exc:
        now = str(exc)
    raise CheckFailed(f"row {tag} not on the replica after {REPLICATION_WAIT_S}s: {now}")


# What shows that each network stack, not something else, configured the interface.
_STACK_PROOF = {
    # ifupdown records the interfaces it brought up.
    "ifupdown": "ifquery --state {iface}",
    # networkd says it configured the link ("routable configured", or "degraded configured"
    # with no gateway).
    "systemd-networkd": "networkctl list --no-pager --no-legend {iface} | grep -w configured",
    # netplan generated networkd's file for it at boot, and networkd configured the link.
    "netplan": "ls /run/systemd/network/10-netplan-{iface}.network && "
               "networkctl list --no-pager --no-legend {iface} | grep -w configured",
}


async def legacy_system(shell: VmShell, vm: VM, system: dict) -> str:
    """The VM boots its legacy system as the archiver read it: that init is PID 1, the NIC
    with the provider's MAC carries the legacy interface name and the planned address, put
    there by the legacy network stack itself, and local.start ran (from that init's hook)."""
    iface = system.get("interface") or "eth0"
    stack = system["network"]
    proof = _STACK_PROOF.get(stack)
    if proof is None:
        raise CheckFailed(f"no check of {stack} in the lab")
    out = await shell.run(
        f"cat /proc/1/comm; echo ---; ip -o -4 addr show dev {shlex.quote(iface)}; echo ---; "
        f"{proof.format(iface=shlex.quote(iface))}; echo ---; cat /etc/ferryman/local.start.done")
    pid1, address, proven, done = (part.strip() for part in out.split("---\n"))
    expected_pid1 = {"systemd": "systemd", "sysvinit": "init", "openrc": "init"}[system["init"]]
    if pid1 != expected_pid1:
        raise CheckFailed(f"PID 1 is {pid1!r}, the legacy host's init is {system['init']}")
    planned = vm.network.address.with_prefixlen
    if f" {planned} " not in f" {address} ":
        raise CheckFailed(f"{iface} has {address or 'no IPv4 address'}, planned {planned}")
    return (f"PID 1 {pid1}; {iface} {planned} by {stack} ({proven.splitlines()[-1]}); "
            f"local.start done {done}")


async def isolation(shell: VmShell, gateway_url: str, outside: list[str]) -> str:
    """Until cutover the VM reaches the migration service (at `gateway_url`, as the VMs see it)
    and nothing outside its group: each `host:port` of `outside` (the legacy hosts' sshd, say)
    must be unreachable from it."""
    # --cacert: the installation's CA, which the configure script copied beside gateway.env.
    probe = (f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 "
             f"--cacert /etc/ferryman/ca.pem {gateway_url}/openapi.json")
    status = (await shell.run(probe)).strip()
    if status != "200":
        raise CheckFailed(f"the migration service answered {status!r}, not 200")
    reached = []
    for target in outside:
        host, _, port = target.rpartition(":")
        probe = (f"timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/{port}' 2>/dev/null "
                 "&& echo open || echo closed")
        if (await shell.run(probe)).strip() != "closed":
            reached.append(target)
    if reached:
        raise CheckFailed(f"reached {', '.join(reached)} before cutover")
    return f"gateway reachable; {', '.join(outside)} unreachable"


# --- all of them -------------------------------------------------------------------------------

async def check_group(plan: Plan, identity: Path, legacy_run: LegacyRun, gateway_url: str,
                      outside: list[str] = (),
                      systems: dict[str, dict] | None = None) -> list[Check]:
    """Run every check on every VM of the group; a failing check is reported, not raised.
    `outside`: `host:port`s beyond the group that no VM may reach before cutover; `systems`:
    each VM's legacy system as the archiver read it (the API's `system`)."""
    shells = {vm.name: VmShell(str(vm.network.address.ip), identity)
              for vm in plan.vms}
    results: list[Check] = []

    async def record(vm: str, what: str, check: Awaitable[str]) -> None:
        try:
            results.append(Check(vm, what, True, await check))
        except CheckFailed as exc:
            results.append(Check(vm, what, False, str(exc)))

    for vm in plan.vms:
        shell = shells[vm.name]
        await record(vm.name, "disks", planned_disks(shell, vm))
        await record(vm.name, "LVM layout", lvm_layout(shell, vm))
        await record(vm.name, "filesystems", filesystems(shell, vm))
        await record(vm.name, "migrating marker", migrating_marker(shell, vm))
        if systems and systems.get(vm.name):
            await record(vm.name, "legacy system", legacy_system(shell, vm, systems[vm.name]))
        if outside:
            await record(vm.name, "isolation", isolation(shell, gateway_url, list(outside)))
        await record(vm.name, "data tree", data_tree(shell, vm, legacy_run))
        master = vm.name if vm.role == Role.DB_MASTER else vm.replica_of
        for engine, databases in (_databases_by_engine(plan.vm(master)) if master else {}
                                  ).items():
            title = _title(engine)
            await record(vm.name, f"database rows ({title})",
                         database_rows(shell, legacy_run, master, engine, databases))
            if engine == "postgresql":
                await record(vm.name, f"roles ({title})",
                             postgresql_roles(shell, legacy_run, master, databases))
    # Last: it writes a row on the master, which the row checks above must not see.
    for vm in plan.vms:
        if vm.role == Role.DB_REPLICA and vm.replica_of:
            for engine in _databases_by_engine(plan.vm(vm.replica_of)):
                await record(vm.name, f"replication ({_title(engine)})",
                             replication(shells[vm.replica_of], shells[vm.name], engine))
    return results


def _databases_by_engine(master: VM) -> dict[str, list[str]]:
    """The master's database names, by engine, in the plan's order."""
    found: dict[str, list[str]] = {}
    for db in master.databases:
        found.setdefault(db.engine, []).append(db.name)
    return found


def _title(engine: str) -> str:
    known = READERS.get(engine)
    return known.title if known else engine
