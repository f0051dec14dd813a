"""Bringing the legacy site up and down, and the `Site` handle tests and the demo use."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lab.legacy import dns as site_dns
from lab.legacy import mounts, net, procs, roots
from lab.legacy.config import HostSpec, Seed, SiteSpec, ZoneSpec, load_site
from shared import proc
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# Which lab folder the running site belongs to. The namespaces are machine-wide (one site per
# machine), so a `down` with other settings (another test's state folder) must still find the
# pidfiles and mounts of the site that runs. /run, like the namespaces, is gone after a reboot.
OWNER_RECORD = Path("/run/ferryman/legacy-site")
LOCK = Path("/run/ferryman/legacy-site.lock")
READY_TIMEOUT_S = 90
SSH_PORT = 22
TOOLS = ("ip", "chroot", "mount", "umount", "zstd", "tar", "ssh-keygen")
# psql on a host as its cluster's superuser through the socket (peer authentication), rows only,
# stopping at the first error.
PSQL = ("runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-v",
        "ON_ERROR_STOP=1")


class LegacyError(Exception):
    """The legacy site could not be brought up or down; the message says why."""


@dataclass(frozen=True)
class LegacyHost:
    name: str
    address: str
    namespace: str
    root: Path
    daemons: tuple[str, ...]


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


@dataclass
class Site:
    """The running legacy site: its hosts, and a way to run a command on one of them."""

    hosts: dict[str, LegacyHost]
    network: str
    uplink: str
    ssh_identity: Path
    known_hosts: Path
    timings: dict[str, float] = field(default_factory=dict)
    dns: ZoneSpec | None = None  # the public zone, served at (site_dns.ADDRESS, dns.port)

    def address(self, name: str) -> str:
        return self.hosts[name].address

    def command(self, name: str, *argv: str) -> list[str]:
        """The argv that runs `argv` on host `name` (its namespace, chrooted in its root, a
        clean environment): for checks, not for the archiver, which goes over SSH."""
        host = self.hosts[name]
        return procs.host_command(host.namespace, host.root, argv)

    async def exec(self, name: str, *argv: str, input: bytes | str | None = None,
                   timeout: float = 120) -> Completed:
        data = input.encode() if isinstance(input, str) else input
        try:
            done = await proc.run(self.command(name, *argv), timeout=timeout, stdin=data,
                                  check=False)
        except proc.CommandTimedOut:
            raise LegacyError(f"{name}: {' '.join(argv)} did not finish in {timeout} s") from None
        return Completed(done.returncode, done.stdout, done.stderr)

    async def run(self, name: str, *argv: str, input: bytes | str | None = None,
                  timeout: float = 120) -> str:
        """Run `argv` on host `name`; its stdout as text, or LegacyError with its stderr."""
        done = await self.exec(name, *argv, input=input, timeout=timeout)
        if done.returncode != 0:
            raise LegacyError(f"{name}: {' '.join(argv)} exited {done.returncode}: "
                              f"{done.stderr.decode(errors='replace').strip()[-2000:]}")
        return done.stdout.decode(errors="replace")

    async def spawn(self, name: str, *argv: str) -> asyncio.subprocess.Process:
        """Start `argv` on host `name` in the background (the caller stops it; `down` would)."""
        return await asyncio.create_subprocess_exec(
            *self.command(name, *argv), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --- up ---------------------------------------------------------------------------------------

async def up(settings: Settings) -> Site:
    """Bring the legacy site up, or check that it is and return it (idempotent)."""
    spec = load_site()
    images = _preflight(settings, spec)
    lab_dir = _lab_dir(settings)
    async with _locked():
        stale = [h for h in spec.hosts.values()
                 if not roots.is_current(lab_dir, h, images[h.name])]
        if not stale and _owner() == lab_dir and await _healthy(spec, lab_dir):
            await asyncio.to_thread(_grant_access, settings, spec, lab_dir)
            return _site(settings, spec, lab_dir, {"up (already)": 0.0})
        # Whatever runs (a half-started site, or one of another lab folder) goes first.
        await asyncio.to_thread(_teardown, spec, lab_dir)
        try:
            return await _bring_up(settings, spec, lab_dir, images, stale)
        except BaseException:
            await asyncio.to_thread(_teardown, spec, lab_dir)
            raise


async def _bring_up(settings: Settings, spec: SiteSpec, lab_dir: Path,
                    images: dict[str, Path], stale: list[HostSpec]) -> Site:
    timings: dict[str, float] = {}
    started = time.monotonic()
    for host in stale:
        for marker in _seed_markers(lab_dir, host):
            marker.unlink(missing_ok=True)
    # Unpacking is mostly zstd and the disk: the hosts in parallel use both cores.
    await asyncio.gather(*(asyncio.to_thread(roots.build, lab_dir, spec, h, images[h.name])
                           for h in stale))
    timings["build roots"] = time.monotonic() - started
    mark = time.monotonic()
    await asyncio.to_thread(_grant_access, settings, spec, lab_dir)
    _write_owner(lab_dir)
    for host in spec.hosts.values():
        root = roots.root_of(lab_dir, host.name)
        mounts.mount_all(root)
        _prepare_run(root)
    net.create(spec)
    for host in spec.hosts.values():
        for daemon in host.daemons:
            procs.start(host, roots.root_of(lab_dir, host.name), daemon, _run_dir(lab_dir),
                        _log_dir(lab_dir))
    if spec.dns:
        site_dns.start(spec.dns, roots.state_dir(lab_dir) / "dns", settings.tsig_key_file,
                       _run_dir(lab_dir), _dns_log(lab_dir))
    site = _site(settings, spec, lab_dir, timings)
    await _wait_ready(site, spec, lab_dir)
    if spec.dns:
        try:
            await site_dns.wait_answering(spec.dns, _run_dir(lab_dir), _dns_log(lab_dir))
        except RuntimeError as exc:
            raise LegacyError(f"the site's DNS: {exc}") from None
    timings["start daemons"] = time.monotonic() - mark
    mark = time.monotonic()
    await _seed(site, spec, lab_dir)
    timings["seed databases"] = time.monotonic() - mark
    timings["up"] = time.monotonic() - started
    log.info("legacy site up", **{k.replace(" ", "_"): round(v, 2) for k, v in timings.items()})
    return site


def _preflight(settings: Settings, spec: SiteSpec) -> dict[str, Path]:
    """Root, the programs, the images: each host's image, by host name."""
    if os.geteuid() != 0:
        raise LegacyError("the legacy site needs root (network namespaces, chroot, mount)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise LegacyError(f"missing programs: {', '.join(missing)}")
    if not (settings.images_dir / ".complete").exists():
        raise LegacyError(f"no complete lab images in {settings.images_dir} "
                          "(deploy/lab/build-images.sh builds them)")
    images = {h.name: roots.image_of(settings.images_dir, h) for h in spec.hosts.values()}
    absent: dict[str, list[str]] = {}
    for name, path in images.items():
        if not path.is_file():
            absent.setdefault(path.name, []).append(name)
    if absent:
        lacking = "; ".join(f"{image} (for {', '.join(hosts)})"
                            for image, hosts in sorted(absent.items()))
        raise LegacyError(f"no {lacking} in {settings.images_dir}: images of an older build? "
                          "(deploy/lab/build-images.sh builds them)")
    return images


def _prepare_run(root: Path) -> None:
    """A fresh /run holds nothing: the directories the daemons expect there."""
    (root / "run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
    # The servers' sockets (and PostgreSQL's pid file), owned by their users, as their
    # packages' tmpfiles.d would make them at boot.
    for user, folder, mode in (("mysql", "run/mysqld", 0o755),
                               ("postgres", "run/postgresql", 0o2775)):
        ids = _ids(root, user)
        if ids:
            run = root / folder
            run.mkdir(exist_ok=True)
            os.chown(run, *ids)
            run.chmod(mode)


def _ids(root: Path, user: str) -> tuple[int, int] | None:
    """uid and gid of `user` in the host's own /etc/passwd (not this machine's)."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    return None


# --- who may log in, and how the archiver knows the hosts ------------------------------------

def _grant_access(settings: Settings, spec: SiteSpec, lab_dir: Path) -> None:
    """The archiver's key in every host's authorized_keys, the hosts' keys in the archiver's
    known_hosts.

    Host keys are made once per lab folder and kept *outside* the roots, so a rebuilt root
    keeps its identity, as a real host's reinstall from backup would: the archiver's
    known_hosts stays right and StrictHostKeyChecking never has to be loosened. They are
    pinned in known_hosts here too, so even the first contact is checked, not just accepted."""
    identity = settings.ssh_identity
    _keygen(identity, "ferryman-archiver")
    public = identity.with_name(identity.name + ".pub").read_text()
    for host in spec.hosts.values():
        root = roots.root_of(lab_dir, host.name)
        key = roots.state_dir(lab_dir) / "hostkeys" / host.name / "ssh_host_ed25519_key"
        _keygen(key, f"root@{host.name}")
        for source, mode in ((key, 0o600), (key.with_name(key.name + ".pub"), 0o644)):
            target = root / "etc/ssh" / source.name
            shutil.copyfile(source, target)
            os.chmod(target, mode)
            os.chown(target, 0, 0)
        authorized = root / "root/.ssh/authorized_keys"
        authorized.write_text(public)
        os.chmod(authorized, 0o600)
        os.chown(authorized, 0, 0)
        _pin(settings.ssh_known_hosts, str(host.address),
             key.with_name(key.name + ".pub").read_text())


def _keygen(path: Path, comment: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, stdin=subprocess.DEVNULL)


def _pin(known_hosts: Path, address: str, public_key: str) -> None:
    """known_hosts gets exactly `address public_key` (an older key for it is removed)."""
    key_type, key = public_key.split()[:2]
    entry = f"{address} {key_type} {key}\n"
    known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if known_hosts.exists():
        if entry in known_hosts.read_text():
            return
        # -R understands hashed entries too (HashKnownHosts); it keeps a .old copy.
        subprocess.run(["ssh-keygen", "-R", address, "-f", str(known_hosts)],
                       capture_output=True)
    with known_hosts.open("a") as handle:
        handle.write(entry)


# --- readiness and health ---------------------------------------------------------------------

async def _wait_ready(site: Site, spec: SiteSpec, lab_dir: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = {(h.name, d) for h in spec.hosts.values() for d in h.daemons}
    while waiting:
        for name, daemon in sorted(waiting):
            if await _answers(site, name, daemon):
                waiting.discard((name, daemon))
            elif procs.recorded_pid(procs.pidfile(_run_dir(lab_dir), name, daemon)) is None:
                raise LegacyError(f"{daemon} on {name} exited at start: "
                                  f"{_log_tail(lab_dir, name, daemon)}")
        if waiting and time.monotonic() > deadline:
            raise LegacyError(f"not answering after {READY_TIMEOUT_S} s: "
                              + ", ".join(f"{d} on {n}" for n, d in sorted(waiting)))
        if waiting:
            await asyncio.sleep(0.1)


async def _answers(site: Site, name: str, daemon: str) -> bool:
    """Does the daemon do its job, seen from where its clients are?"""
    address = site.address(name)
    if daemon == "sshd":
        return (await _read_banner(address, SSH_PORT, b"")).startswith(b"SSH-")
    if daemon == "nginx":
        reply = await _read_banner(address, 80, b"GET / HTTP/1.0\r\nHost: shop.example\r\n\r\n")
        return reply.startswith(b"HTTP/1.1 200")
    if daemon == "mariadb":
        done = await site.exec(name, "mariadb-admin", "--protocol=SOCKET", "ping", timeout=20)
        return done.returncode == 0
    if daemon == "postgresql":  # a query through its socket: it is out of recovery and serves
        done = await site.exec(name, *PSQL, "-d", "postgres", "-c", "SELECT 1", timeout=20)
        return done.returncode == 0
    return False


async def _read_banner(address: str, port: int, send: bytes) -> bytes:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 2)
    except (OSError, asyncio.TimeoutError):
        return b""
    try:
        if send:
            writer.write(send)
            await writer.drain()
        return await asyncio.wait_for(reader.read(64), 5)
    except (OSError, asyncio.TimeoutError):
        return b""
    finally:
        writer.close()


async def _healthy(spec: SiteSpec, lab_dir: Path) -> bool:
    if not net.is_up(spec):
        return False
    site = _site(None, spec, lab_dir, {})
    for host in spec.hosts.values():
        root = roots.root_of(lab_dir, host.name)
        if len(mounts.mounts_below(root)) < len(mounts.MOUNTS):
            return False
        for daemon in host.daemons:
            if procs.recorded_pid(procs.pidfile(_run_dir(lab_dir), host.name, daemon)) is None:
                return False
            if not await _answers(site, host.name, daemon):
                return False
    if spec.dns and (procs.recorded_pid(site_dns.pidfile(_run_dir(lab_dir))) is None
                     or not await site_dns.answers(spec.dns)):
        return False
    return True


# --- seeding ----------------------------------------------------------------------------------

async def _seed(site: Site, spec: SiteSpec, lab_dir: Path) -> None:
    """Each seeded database is loaded once per built root (a marker per database remembers
    which SQL it was loaded from: another SQL loads again, into the same database)."""
    for host in spec.hosts.values():
        for seed in host.seeds:
            marker = _seed_marker(lab_dir, host, seed)
            sql = seed.sql.read_bytes()
            digest = hashlib.sha256(sql).hexdigest()
            if marker.exists() and marker.read_text() == digest:
                continue
            await _SEEDERS[seed.engine](site, host.name, seed.database, sql)
            marker.write_text(digest)


async def _seed_mariadb(site: Site, host: str, database: str, sql: bytes) -> None:
    await site.run(host, "mariadb", "-e",
                   f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
    await site.run(host, "mariadb", database, input=sql)


async def _seed_postgresql(site: Site, host: str, database: str, sql: bytes) -> None:
    # CREATE DATABASE has no IF NOT EXISTS, and runs in no transaction (nor a DO block):
    # psql's \gexec runs it when the query makes it (the cluster's encoding and locale,
    # Debian's: UTF-8, C.UTF-8). The SQL makes the roles and gives them the database.
    create = (f"SELECT 'CREATE DATABASE {database}' WHERE NOT EXISTS "
              f"(SELECT FROM pg_database WHERE datname = '{database}')\\gexec\n")
    await site.run(host, *PSQL, "-d", "postgres", input=create)
    await site.run(host, *PSQL, "-d", database, input=sql)


_SEEDERS = {"mariadb": _seed_mariadb, "postgresql": _seed_postgresql}


def _seed_marker(lab_dir: Path, host: HostSpec, seed: Seed) -> Path:
    return roots.state_dir(lab_dir) / f"{host.name}.{seed.database}.seeded"


def _seed_markers(lab_dir: Path, host: HostSpec) -> list[Path]:
    return list(roots.state_dir(lab_dir).glob(f"{host.name}.*seeded"))


# --- down -------------------------------------------------------------------------------------

async def down(settings: Settings) -> None:
    """Stop every process of the site, unmount, delete the namespaces and the veth. Safe to
    run at any time, any number of times."""
    spec = load_site()
    async with _locked():
        await asyncio.to_thread(_teardown, spec, _lab_dir(settings))


def _teardown(spec: SiteSpec, lab_dir: Path) -> None:
    owner = _owner()
    lab_dirs = {lab_dir} | ({owner} if owner else set())
    host_roots = [roots.root_of(d, h) for d in lab_dirs for h in spec.hosts]
    pidfiles = [p for d in lab_dirs for p in _run_dir(d).glob("*.pid")]
    recorded = {pid for p in pidfiles if (pid := procs.recorded_pid(p)) is not None}
    pids = set(recorded) | procs.rooted_in(host_roots)
    existing = net.namespaces()
    for host in spec.hosts.values():
        if host.namespace in existing:
            pids |= set(net.namespace_pids(host.namespace))
    pids.discard(os.getpid())
    left = procs.stop(pids)
    procs.reap(recorded)
    stuck = [point for root in host_roots for point in mounts.unmount_all(root)]
    net.delete(spec)
    for pidfile in pidfiles:
        pidfile.unlink(missing_ok=True)
    if owner in lab_dirs:
        OWNER_RECORD.unlink(missing_ok=True)
    if left or stuck:
        raise LegacyError(f"legacy site not fully down: processes {left} still run, "
                          f"mounts {stuck} remain")


# --- status -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    namespace: bool
    daemons: dict[str, str]  # daemon -> "answers" | "running, not answering" | "stopped"


async def status(settings: Settings) -> list[HostStatus]:
    spec = load_site()
    lab_dir = _owner() or _lab_dir(settings)
    site = _site(None, spec, lab_dir, {})
    existing = net.namespaces()
    result = []
    for host in spec.hosts.values():
        states = {}
        for daemon in host.daemons:
            pid = procs.recorded_pid(procs.pidfile(_run_dir(lab_dir), host.name, daemon))
            if pid is None:
                states[daemon] = "stopped"
            elif await _answers(site, host.name, daemon):
                states[daemon] = "answers"
            else:
                states[daemon] = "running, not answering"
        result.append(HostStatus(host.name, str(host.address), host.namespace in existing,
                                 states))
    return result


# --- helpers ----------------------------------------------------------------------------------

def _site(settings: Settings | None, spec: SiteSpec, lab_dir: Path,
          timings: dict[str, float]) -> Site:
    hosts = {h.name: LegacyHost(h.name, str(h.address), h.namespace,
                                roots.root_of(lab_dir, h.name), h.daemons)
             for h in spec.hosts.values()}
    return Site(hosts=hosts, network=str(spec.network), uplink=str(spec.uplink),
                ssh_identity=settings.ssh_identity if settings else Path(),
                known_hosts=settings.ssh_known_hosts if settings else Path(), timings=timings,
                dns=spec.dns)


def _lab_dir(settings: Settings) -> Path:
    # Absolute, as recorded in OWNER_RECORD and compared with it.
    return Path(os.path.abspath(settings.lab_dir))


def _run_dir(lab_dir: Path) -> Path:
    return roots.state_dir(lab_dir) / "run"


def _log_dir(lab_dir: Path) -> Path:
    return roots.state_dir(lab_dir) / "logs"


def _dns_log(lab_dir: Path) -> Path:
    return _log_dir(lab_dir) / "site-named.log"


def _log_tail(lab_dir: Path, host: str, daemon: str) -> str:
    try:
        text = (_log_dir(lab_dir) / f"{host}-{daemon}.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text.strip()[-1500:] or "(empty log)"


def _owner() -> Path | None:
    try:
        return Path(OWNER_RECORD.read_text().strip())
    except OSError:
        return None


def _write_owner(lab_dir: Path) -> None:
    OWNER_RECORD.parent.mkdir(parents=True, exist_ok=True)
    OWNER_RECORD.write_text(f"{lab_dir}\n")


@asynccontextmanager
async def _locked():
    """One up or down at a time on this machine (two shells, or a test and the demo): the
    site is machine-wide."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as handle:
        await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
