"""The cutover runbook of one group: each step's do and undo (shared/cutover_names.py lists
them in order).

Steps act on the legacy hosts (over SSH, through the plan's `source`), on the new VMs (over SSH,
at their planned addresses, with the migration service's key, which travelled in the root
archives' authorized_keys), on DNS (RFC 2136) and on the provider (the outbound block).

Every undo works from the plan and from what is on the machines, never from memory of the do,
so a run cut off by a crash rolls back from its journal in a fresh process (runbook.py). Each
undo is safe after a half-done do and when repeated.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.cutover import logical, replication
from services.cutover.runbook import Step
from services.cutover.scripts import MAINTENANCE_OFF, MAINTENANCE_ON, UNFORWARD, forward_script
from shared import cutover_names as names
from shared import databases, proc
from shared.databases import Engine
from shared.dns import DnsDriver, RecordSet
from shared.plan import VM, Plan, Role
from shared.providers.base import Provider
from shared.site_checks import run_checks
from shared.ssh import Remote, RemoteError, pipe

MARKER = "/etc/ferryman/migrating"
CONFIG_MANAGEMENT = "/etc/ferryman/config-management"
RSYNC_TIMEOUT_S = 1800.0
# rsync: 24 is "some files vanished before they could be transferred": a live site's temporary
# files do that, in the window too (a job still running behind the maintenance page); the pass
# still copied everything that stayed, and a vanished file is rightly not on the new VM.
RSYNC_VANISHED = 24


class StepFailed(Exception):
    pass


@dataclass(frozen=True)
class Machine:
    """One VM of the group, old and new."""

    vm: VM
    vm_id: uuid.UUID
    address: str  # the new VM's, as this machine reaches it
    new: Remote
    legacy: Remote | None  # None: the plan gives no SSH source for it

    @property
    def name(self) -> str:
        return self.vm.name


class GroupRunbook:
    def __init__(self, plan: Plan, machines: list[Machine], provider: Provider,
                 dns: DnsDriver | None, staging: Path, rehearse_failure_at: str | None = None,
                 control_dir: Path | None = None, database_mode: str | None = None):
        self.control_dir = control_dir
        self.plan = plan
        self.settings = plan.cutover
        # The plan's mode, unless the operator chose the other one for this run.
        self.database_mode = database_mode or plan.cutover.mode
        self.machines = machines
        self.provider = provider
        self.dns = dns
        self.staging = staging
        self.rehearse_failure_at = rehearse_failure_at

    async def close(self) -> None:
        """End the run's shared SSH connections and remove their sockets' folder."""
        remotes = {r for m in self.machines for r in (m.new, m.legacy) if r is not None}
        await asyncio.gather(*(r.close() for r in remotes))
        if self.control_dir is not None:
            shutil.rmtree(self.control_dir, ignore_errors=True)

    def steps(self, prepare: bool) -> list[Step]:
        wanted = names.PREPARE_STEPS if prepare else names.WINDOW_STEPS
        made = {step.name: step for step in self._all()}
        return [self._rehearsed(made[name]) for name in wanted]

    def _all(self) -> list[Step]:
        return [
            # No undo: the TTL stays low on purpose. A low TTL harms nothing, the original is not
            # known after a crash, and the next attempt needs it low anyway.
            Step("lower-dns-ttl", self.lower_dns_ttl),
            Step("rsync-before-window", self.rsync),
            # No undo: a link to the old master harms nothing, and is what the next run needs.
            Step("replicate-from-legacy", self.replicate_from_legacy),
            Step("maintenance-page", self.maintenance_on, self.maintenance_off),
            Step("rsync-in-window", self.rsync),
            Step("database", self.database, self.database_undo),
            Step("start-application", self.start_application),
            Step("http-checks", self.http_checks),
            Step("switch-dns", self.switch_dns, self.switch_dns_back),
            Step("forward-old-addresses", self.forward_on, self.forward_off),
            Step("remove-migrating-marker", self.remove_marker, self.restore_marker),
            Step("config-management", self.config_management),
            Step("lift-outbound-block", self.lift_block, self.block_again),
        ]

    def _rehearsed(self, step: Step) -> Step:
        """A rehearsal fails the named step after it did its work, so its undo runs too."""
        if step.name != self.rehearse_failure_at:
            return step

        async def fail_after() -> str:
            await step.do()
            raise StepFailed("rehearsed failure (the operator asked for it)")
        return Step(step.name, fail_after, step.undo)

    # --- who is who ---------------------------------------------------------------------------

    def _apps(self) -> list[Machine]:
        return [m for m in self.machines if m.vm.role == Role.APP]

    def _legacy(self, machine: Machine, what: str) -> Remote:
        if machine.legacy is None:
            raise StepFailed(f"{what}: the plan gives no SSH source for {machine.name}, so its "
                             "legacy host cannot be reached")
        return machine.legacy

    def _machine(self, name: str) -> Machine:
        return next(m for m in self.machines if m.name == name)

    # --- DNS ----------------------------------------------------------------------------------

    async def _current(self, name: str) -> RecordSet:
        found = await self.dns.lookup(name, "A")
        if found is None:
            raise StepFailed(f"{name} has no A record at {self.settings.dns.server}")
        return found

    async def lower_dns_ttl(self) -> str:
        if self.dns is None:
            return "no DNS zone in the plan"
        ttl = self.settings.dns_ttl_s
        done = []
        for name in self.settings.dns.records:
            current = await self._current(name)
            if current.ttl > ttl:
                await self.dns.replace(name, "A", list(current.values), ttl)
                done.append(f"{name} {current.ttl}→{ttl}s")
            else:
                done.append(f"{name} already {current.ttl}s")
        return "; ".join(done)

    def _old_addresses(self, vm_name: str) -> list[str]:
        public = self.plan.vm(vm_name).network.public_ip
        return [str(public)] if public else []

    async def switch_dns(self) -> str:
        if self.dns is None:
            return "no DNS zone in the plan"
        changed = []
        for name, vm_name in self.settings.dns.records.items():
            address = self._machine(vm_name).address
            await self.dns.replace(name, "A", [address], self.settings.dns_ttl_s)
            changed.append(f"{name} → {address}")
        return "; ".join(changed)

    async def switch_dns_back(self) -> None:
        if self.dns is None:
            return
        for name, vm_name in self.settings.dns.records.items():
            old = self._old_addresses(vm_name)
            if old:
                await self.dns.replace(name, "A", old, self.settings.dns_ttl_s)

    # --- rsync catch-up -----------------------------------------------------------------------

    def _shared_paths(self, machine: Machine) -> list[str]:
        """The group's shared paths this VM archived (below one of its archive paths)."""
        return [path for path in self.settings.shared_paths
                if any(_below(path, a.path) for a in machine.vm.archives)]

    def _excludes(self, path: str) -> list[str]:
        """The plan's excludes as rsync patterns relative to the transfer of `path`."""
        patterns = []
        for pattern in self.settings.excludes:
            if pattern.startswith("/"):
                if _below(pattern, path) and pattern != path:
                    patterns.append(pattern[len(path.rstrip("/")):])  # anchored at the root
            else:
                patterns.append(pattern)
        return patterns

    async def rsync(self) -> str:
        """Legacy → this machine's staging copy → new VM; --delete both ways, so the new VM ends
        up like the legacy host minus the excludes. Through this machine because the new VMs
        may not reach out until the block is lifted, and only this machine holds both keys."""
        done = []
        for machine in self.machines:
            paths = self._shared_paths(machine)
            if not paths:
                continue
            legacy = self._legacy(machine, "rsync")
            # The host answers with the paths' numbers, never their names: a path is data,
            # whatever its bytes (a space in one split a listing of names).
            present = {int(n) for n in (await legacy.run(
                " ; ".join(f"test -d {shlex.quote(p)} && echo {n} || true"
                           for n, p in enumerate(paths)), what="looking for the shared paths"
            )).split()}
            for n, path in enumerate(paths):
                if n not in present:
                    done.append(f"{machine.name}: no {path} on the legacy host")
                    continue
                copied = await self._rsync_path(machine, legacy, path)
                done.append(f"{machine.name} {path}: {copied}")
        return "; ".join(done) or "no shared paths"

    async def _rsync_path(self, machine: Machine, legacy: Remote, path: str) -> str:
        stage = self.staging / machine.name / path.lstrip("/")
        stage.mkdir(parents=True, exist_ok=True)
        options = ["-aH", "--numeric-ids", "--delete", "--stats"]
        options += [f"--exclude={p}" for p in self._excludes(path)]
        pulled = await _rsync([*options, "-e", legacy.ssh_command(),
                               f"{legacy.host}:{path}/", f"{stage}/"],
                              what=f"rsync {path} from {legacy.label}", vanished_ok=True)
        await machine.new.run(f"mkdir -p {shlex.quote(path)}", what=f"creating {path}")
        # Nothing changes the staging copy meanwhile: here a vanished file is an error.
        pushed = await _rsync([*options, "-e", machine.new.ssh_command(),
                               f"{stage}/", f"{machine.new.host}:{path}/"],
                              what=f"rsync {path} to {machine.new.label}", vanished_ok=False)
        return f"{pulled} files from the legacy host, {pushed} to the new VM"

    # --- maintenance page ---------------------------------------------------------------------

    async def maintenance_on(self) -> str:
        for machine in self._apps():
            await self._legacy(machine, "maintenance page").run(
                MAINTENANCE_ON, what="turning the maintenance page on")
        return f"maintenance page on {', '.join(m.name for m in self._apps())}"

    async def maintenance_off(self) -> None:
        for machine in self._apps():
            if machine.legacy is not None:
                await machine.legacy.run(MAINTENANCE_OFF, what="turning the maintenance page off")

    # --- databases ----------------------------------------------------------------------------

    def _masters(self) -> list[Machine]:
        return [m for m in self.machines if m.vm.role == Role.DB_MASTER and m.vm.databases]

    def _servers(self, machine: Machine) -> list[Engine]:
        """The engines of the master's databases, each once."""
        found = [databases.engine(db.engine) for db in machine.vm.databases]
        return list(dict.fromkeys(found))

    def _refusal(self, machine: Machine, mode: str) -> str | None:
        """Why database mode `mode` cannot move the master's databases, or None; said before
        anything changes."""
        if mode == "replication":
            others = [db.name for db in machine.vm.databases
                      if not databases.engine(db.engine).hands_off]
            if others:
                able = databases.titles(e for e in databases.ENGINES.values() if e.hands_off)
                return f"{', '.join(others)}: the replication hand-off handles {able} only so far"
            return None
        for db in machine.vm.databases:
            if not databases.engine(db.engine).restores:
                able = databases.titles(e for e in databases.ENGINES.values() if e.restores)
                return (f"{db.name}: the window's dump-and-restore handles {able} only so far, "
                        f"not {db.engine}")
        return None

    def _links(self, machine: Machine, mode: str = "replication") -> list[replication.Link]:
        """The master's pairs for the hand-off: one per engine family among its databases (a
        master may hold MariaDB and PostgreSQL), each of an engine that does `mode`."""
        problem = self._refusal(machine, mode)
        if problem:
            raise StepFailed(problem)
        return [replication.Link(self._legacy(machine, "replication"), machine.new,
                                 machine.address, specs)
                for specs in databases.by_family(machine.vm.databases)]

    async def replicate_from_legacy(self) -> str:
        if self.database_mode != "replication":
            return f"mode {self.database_mode}: the databases move in the window"
        done = []
        for machine in self._masters():
            for link in self._links(machine):
                try:
                    done.append(await _handoff(link).ensure_replicating(link))
                except replication.HandoffError as exc:
                    raise StepFailed(str(exc)) from None
        return "; ".join(done) or "no databases"

    async def database(self) -> str:
        done = []
        for machine in self._masters():
            legacy = self._legacy(machine, "database")
            problem = self._refusal(machine, self.database_mode)
            if problem:
                raise StepFailed(problem)
            # No write may land on the old master after its dump (or after the position the
            # new master catches up to): it would be lost.
            for server in self._servers(machine):
                bound = await self._server_on(server, legacy)
                await replication.sql(bound, legacy, bound.read_only_sql(True),
                                      what="making the old master read-only")
            if self.database_mode == "replication":
                for link in self._links(machine):
                    started = time.monotonic()
                    try:
                        promoted = await _handoff(link).promote(link)
                    except replication.HandoffError as exc:
                        raise StepFailed(str(exc)) from None
                    done.append(f"{promoted} ({time.monotonic() - started:.1f}s)")
                continue
            await self._unlink_subscriptions(machine)
            for db in machine.vm.databases:
                started = time.monotonic()
                server = databases.engine(db.engine)
                source = databases.database_source(db, over_ssh=True)
                script, secret = server.remote_dump_script(source)
                await pipe(legacy, script, machine.new, server.restore_command(db.name),
                           source_input=secret,
                           what=f"dump of {db.name} from {legacy.label} into {machine.new.label}")
                done.append(f"{db.name} {machine.name}: {time.monotonic() - started:.1f}s")
        return "; ".join(done) or "no databases"

    async def _unlink_subscriptions(self, machine: Machine) -> None:
        """A PostgreSQL master that an earlier prepared run subscribed to the legacy one is
        unlinked before its databases are replaced (a subscription keeps its database from
        being dropped, and its slot on the legacy master would keep every WAL file)."""
        for link in self._links(machine, "dump-and-restore"):
            if link.engine.hands_off_logically and await logical.subscribed(link):
                await logical.unlink(link)

    async def database_undo(self) -> None:
        """The old master takes writes again (the new one's copy is simply out of date; in mode
        replication, the next run's replicate-from-legacy loads it again and relinks it). A
        master whose databases the mode refused was never made read-only."""
        for machine in self._masters():
            if machine.legacy is not None and self._refusal(machine, self.database_mode) is None:
                for server in self._servers(machine):
                    bound = await self._server_on(server, machine.legacy)
                    await replication.sql(bound, machine.legacy, bound.read_only_sql(False),
                                          what="making the old master writable again")

    @staticmethod
    async def _server_on(server: Engine, machine: Remote) -> Engine:
        """`server` bound to the version of the one on `machine` (its statements depend on it)."""
        try:
            return await replication.server_on(server, machine)
        except replication.HandoffError as exc:
            raise StepFailed(str(exc)) from None

    # --- the application, checks --------------------------------------------------------------

    async def start_application(self) -> str:
        units = self.settings.services
        if not units:
            return "no services in the plan"
        started = []
        for machine in self._apps():
            await machine.new.run("systemctl start " + shlex.join(units) + " && "
                                  "systemctl is-active " + shlex.join(units),
                                  what="starting the application")
            started.append(machine.name)
        return f"{', '.join(units)} active on {', '.join(started)}"

    async def http_checks(self) -> str:
        results = await run_checks(self.plan, {m.name: m.address for m in self.machines})
        failed = [r for r in results if not r.ok]
        if failed:
            raise StepFailed("; ".join(str(r) for r in failed))
        return f"{len(results)} checks passed"

    # --- forwarding on the legacy side --------------------------------------------------------

    def _forwarded(self) -> list[Machine]:
        return [m for m in self.machines if m.vm.network.public_ip is not None]

    async def forward_on(self) -> str:
        done = []
        for machine in self._forwarded():
            legacy = self._legacy(machine, "forwarding")
            old = machine.vm.network.public_ip
            await legacy.run(forward_script(str(old), machine.address),
                             what=f"forwarding {old} to {machine.address}")
            done.append(f"{old} → {machine.address}")
        return "; ".join(done) or "no public addresses in the plan"

    async def forward_off(self) -> None:
        for machine in self._forwarded():
            if machine.legacy is not None:
                await machine.legacy.run(UNFORWARD, what="removing the forwarding")

    # --- the new VMs take over ----------------------------------------------------------------

    async def remove_marker(self) -> str:
        for machine in self.machines:
            await machine.new.run(f"rm -f {MARKER}", what="removing the migrating marker")
        return f"removed on {len(self.machines)} VMs"

    async def restore_marker(self) -> None:
        for machine in self.machines:
            text = f"group={self.plan.group}\nvm={machine.name}\nrestored-by=rollback\n"
            await machine.new.run(f"test -e {MARKER} || printf %s {shlex.quote(text)} > {MARKER}",
                                  what="restoring the migrating marker")

    async def config_management(self) -> str:
        ran = []
        for machine in self.machines:
            out = await machine.new.run(
                f"if [ -x {CONFIG_MANAGEMENT} ]; then {CONFIG_MANAGEMENT}; echo ran; fi",
                what="running config management")
            if out.strip().endswith("ran"):
                ran.append(machine.name)
        return f"ran on {', '.join(ran)}" if ran else "no config-management hook on any VM"

    async def lift_block(self) -> str:
        await self.provider.set_outbound(self.plan.group, True)
        return "the group's VMs may reach out"

    async def block_again(self) -> None:
        await self.provider.set_outbound(self.plan.group, False)


def _handoff(link: replication.Link):
    """The module that hands off the link's engine: logical replication for PostgreSQL, the
    binary log for the MySQL family (both with ensure_replicating and promote)."""
    return logical if link.engine.hands_off_logically else replication


def _below(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


_TRANSFERRED = re.compile(r"Number of regular files transferred: ([\d,]+)")


async def _rsync(argv: list[str], *, what: str, vanished_ok: bool) -> int:
    """Run rsync; the number of files it transferred."""
    try:
        done = await proc.run(["rsync", *argv], timeout=RSYNC_TIMEOUT_S, what=what, check=False)
    except proc.CommandTimedOut:
        raise RemoteError(f"{what} did not finish in {RSYNC_TIMEOUT_S:.0f}s") from None
    if done.returncode != 0 and not (vanished_ok and done.returncode == RSYNC_VANISHED):
        raise RemoteError(f"{what} exited {done.returncode}: {done.stderr_tail(400)}")
    found = _TRANSFERRED.search(done.stdout.decode(errors="replace"))
    return int(found[1].replace(",", "")) if found else 0
