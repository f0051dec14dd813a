"""Render a VM's configuration script, and the local.start it installs, from the plan.

Both are bash scripts made from mustache templates (chevron). chevron escapes values for HTML,
which in a shell script is both wrong and unsafe, so here every value that reaches a script is
shell-quoted with `shlex.quote` first and the templates insert it unescaped (`{{{...}}}`), as one
word: an assignment or an argument, never inside double quotes. Text destined for other files
(fstab, interfaces, hosts, my.cnf, SQL) is composed here, escaped for its own format, and
written by the script with `printf '%s\\n' "$VAR"`, so no value is ever interpreted by the shell.

What cannot be written safely at all (a relative or `..` path, a database name with a `/`, an
archive id that would change the download URL) is refused with a RenderError, even though a
validated plan never holds one: the renderer does not rely on the plan's validation for safety.
Where it refuses a plan's value it applies the plan's own rule (shared.plan, the database
engines), so that a plan `ferry validate` accepts always renders.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import chevron

from shared import databases
from shared.databases import Engine
from shared.databases.mysql_versions import Flavour, version_number
from shared.databases.postgresql import major
from shared.plan import VM, Filesystem, Plan, plain_absolute_path, size_mib
from shared.providers.base import ProviderDisk
from shared.systems import BASE_IMAGE_SYSTEM, HostSystem, NetworkSettings, root_changes

__all__ = [
    "ArchiveRef", "RenderError", "build_context", "build_local_start_context",
    "render_local_start", "render_script",
]

TEMPLATES = Path(__file__).parent / "templates"
SCRIPT_TEMPLATE = "configure.sh.mustache"
LOCAL_START_TEMPLATE = "local-start.sh.mustache"
PARTIALS = ("reporting.sh", "disks.sh", "postgresql.sh")  # {{> disks.sh}} is templates/disks.sh.mustache

VOLUME_GROUP = "local"  # the root LV is /dev/local/root, which GRUB and the initrd are told
DUMP_SUFFIX = ".sql.zst"

_ARCHIVE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")  # one URL path segment, as is
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# What a guest reads back whole: SATA and virtio-blk keep 20 bytes; the script trims spaces.
_SERIAL = re.compile(r"^[!-~]{1,20}$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
# Characters fstab (getmntent) cannot hold as they are, with their octal escapes.
_FSTAB_ESCAPES = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}


class RenderError(ValueError):
    """A value of the plan or an archive cannot be written into the scripts safely."""


@dataclass(frozen=True)
class ArchiveRef:
    """One archive of a VM in the archive store, as the script downloads it."""

    id: str
    kind: Literal["path", "database"]
    source: str  # the archived path ("/data"), or the database name for a dump ("shop")
    sha256: str
    size: int
    engine: str | None = None  # for kind database: the engine's name, as the plan gives it
    # For kind database: what its server answered when asked its version (PostgreSQL's
    # server_version_num), if the engine asks.
    server_version: str | None = None


# --- the configuration script --------------------------------------------------------------------

def render_script(plan: Plan, vm: VM, archives: list[ArchiveRef], *,
                  disks: list[ProviderDisk], mac: str | None,
                  system: HostSystem = BASE_IMAGE_SYSTEM,
                  support: dict[str, str] | None = None) -> str:
    """The configuration script the migration image runs for `vm`."""
    return _render(SCRIPT_TEMPLATE, build_context(plan, vm, archives, disks=disks, mac=mac,
                                                  system=system, support=support))


def build_context(plan: Plan, vm: VM, archives: list[ArchiveRef], *,
                  disks: list[ProviderDisk], mac: str | None,
                  system: HostSystem = BASE_IMAGE_SYSTEM,
                  support: dict[str, str] | None = None) -> dict:
    """The configuration script's template values, every one already shell-quoted.

    `disks` are the VM's disks as its provider attached them, in plan order: the script finds
    each by its serial, whatever its bus made of its name. `mac` is its NIC's, by which the
    new network configuration finds the interface; `system` is the legacy root's (the base
    image's for a VM without one), whose own files carry the network, hostname and first-boot
    hook. `support` maps support files
    (base-image.tar.zst, kernel.tar.zst) to their sha256, which the script then checks;
    without it they are taken unchecked.
    """
    support = support or {}
    _check_disks(vm, disks)
    paths = [a for a in archives if a.kind == "path"]
    # A replica of an engine that copies its master (PostgreSQL's pg_basebackup) loads none of
    # that engine's dumps: they are not downloaded.
    dumps = [a for a in archives if a.kind == "database"
             and (_role(vm) != "db-replica" or _dump_engine(a).replica_loads_dumps)]
    for archive in archives:
        _check_archive(archive)
    volumes = vm.logical_volumes
    boot = vm.boot
    return {
        "group": q(plan.group),
        "vm_name": q(vm.name),
        "role": q(_role(vm)),
        "disks": [{"serial": q(disk.serial), "bus": q(disk.bus.value)} for disk in disks],
        "boot_mib": q(_mib(boot.size_gb)),
        "boot_type": q(fs_type(boot)),
        "data_dir": q(_absolute(vm.database_data_dir, "database_data_dir")),
        "volume_group": q(VOLUME_GROUP),
        "volumes": [_volume(fs) for fs in volumes],
        "mounts": _mounts(volumes),
        "has_root_archive": any(a.source == "/" for a in paths),
        "base_image_sha256": q(_sha256_or_empty(support.get(BASE_IMAGE))),
        "kernel_sha256": q(_sha256_or_empty(support.get(KERNEL_BUNDLE))),
        "archives": [_archive(a, vm) for a in sorted(paths, key=_unpack_order)],
        "dumps": [_dump(a, vm) for a in dumps],
        "fstab_root": q(fstab_line(_lv_device(_root(volumes)), "/", fs_type(_root(volumes)),
                                   "defaults", 0, 1)),
        "fstab_volumes": q("\n".join(_fstab_volume(fs) for fs in volumes if fs.mount != "/")),
        "boot_mount_options": q(MOUNT_OPTIONS),
        **_system_context(system, vm, mac),
        "migrating_marker": q(f"group={plan.group}\nvm={vm.name}"),
        "local_start": q(render_local_start(plan, vm, archives)),
    }


BASE_IMAGE = "base-image.tar.zst"
KERNEL_BUNDLE = "kernel.tar.zst"


def _sha256_or_empty(value: str | None) -> str:
    if value is None:
        return ""
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise RenderError(f"support data: {value!r} is not a sha256")
    return value


def q(value: object) -> str:
    """One shell word that stands for exactly `value`."""
    return shlex.quote(str(value))


def fs_type(fs: Filesystem) -> str:
    """The filesystem's type; the plan's defaults when it was built without validation."""
    if fs.type:
        return fs.type
    return "swap" if fs.mount == "swap" else "ext3" if fs.mount == "/boot" else "xfs"


def fstab_line(source: str, mount: str, kind: str, options: str, dump: int,
               passno: int) -> str:
    return "\t".join([fstab_escape(source), fstab_escape(mount), kind, options, str(dump),
                      str(passno)])


def fstab_escape(field: str) -> str:
    """A field of fstab: whitespace and backslash as getmntent's octal escapes."""
    return "".join(_FSTAB_ESCAPES.get(char, char) for char in field)


def _system_context(system: HostSystem, vm: VM, mac: str | None) -> dict:
    """The files of the new root that its system reads (shared/systems), as the script's
    write_file / write_link / retire_files arguments."""
    if mac is None or not _MAC.match(mac):
        raise RenderError(f"the provider reported {'no' if mac is None else 'a malformed'} MAC "
                          f"for {vm.name} ({mac!r}): its network could not be matched to its NIC")
    network = vm.network
    changes = root_changes(system, NetworkSettings(
        mac=mac.lower(), interface=system.interface_name,
        address=ipaddress.ip_interface(str(network.address)),
        gateway=ipaddress.ip_address(str(network.gateway)) if network.gateway else None,
        dns=tuple(ipaddress.ip_address(str(server)) for server in network.dns),
        hostname=network.hostname))
    return {
        "system_summary": q(system.summary()),
        "initramfs_tool": q(system.initramfs or ""),
        "root_retired": [{"folder": q(r.folder), "pattern": q(r.pattern), "keep": q(r.keep)}
                         for r in changes.retired],
        "root_files": [{"path": q(f.path), "mode": q(f.mode), "text": q(f.text)}
                       for f in changes.files],
        "root_links": [{"path": q(link.path), "target": q(link.target)}
                       for link in changes.links],
        "rc_local_line": q(changes.rc_local_line or ""),
    }


def _check_disks(vm: VM, disks: list[ProviderDisk]) -> None:
    """The provider's disks are the plan's, in its order, each with a serial the guest can
    read back whole."""
    if len(disks) != len(vm.disks) or not disks:
        raise RenderError(f"{len(vm.disks)} disk(s) in the plan but the provider reports "
                          f"{len(disks)}")
    for index, disk in enumerate(disks):
        if disk.index != index:
            raise RenderError(f"the provider reports disk {disk.index} as disk {index}")
        if not _SERIAL.match(disk.serial):
            raise RenderError(f"disk {index}: serial {disk.serial!r} is not 1 to 20 printable "
                              "characters without spaces")


def _role(vm: VM) -> str:
    return getattr(vm.role, "value", vm.role)


def _mib(size_gb: float) -> int:
    try:
        return size_mib(size_gb)
    except ValueError as exc:
        raise RenderError(f"size: {exc}") from None


def _root(volumes: list[Filesystem]) -> Filesystem:
    for fs in volumes:
        if fs.mount == "/":
            return fs
    raise RenderError("the VM has no '/' filesystem")


def _lv_device(fs: Filesystem) -> str:
    return f"/dev/{VOLUME_GROUP}/{fs.lv_name}"


def _volume(fs: Filesystem) -> dict:
    if fs.mount != "swap":
        _absolute(fs.mount, "mount point")
    return {"lv_name": q(fs.lv_name), "size_mib": q(_mib(fs.size_gb)), "type": q(fs_type(fs)),
            "device": q(_lv_device(fs))}


def _mounts(volumes: list[Filesystem]) -> list[dict]:
    """The LVs to mount, parents before children: "/" first (the script mounts /boot, whose
    device it finds, right after it), then the rest (already in that order)."""
    return [{"device": q(_lv_device(fs)), "mount": q(fs.mount), "type": q(fs_type(fs)),
             "is_root": fs.mount == "/"}
            for fs in volumes if fs.mount != "swap"]


# systemd gives up on a mount's device after 90 s and drops to emergency mode: a VM first
# booted from its disk on a loaded host (under emulation) has been seen to need longer for
# /boot's. Other inits' mount(8) ignores x- options.
MOUNT_OPTIONS = "defaults,x-systemd.device-timeout=600s"


def _fstab_volume(fs: Filesystem) -> str:
    if fs.mount == "swap":
        return fstab_line(_lv_device(fs), "none", "swap", "sw", 0, 0)
    return fstab_line(_lv_device(fs), fs.mount, fs_type(fs), MOUNT_OPTIONS, 0, 2)


def _unpack_order(archive: ArchiveRef) -> tuple[int, str]:
    # "/" first, then parents before children: a child's files land on top of its parent's.
    depth = 0 if archive.source == "/" else archive.source.count("/")
    return depth, archive.source


def _check_archive(archive: ArchiveRef) -> None:
    if not _ARCHIVE_ID.match(archive.id):
        raise RenderError(f"archive id {archive.id!r} is not a plain name")
    if not _SHA256.match(archive.sha256):
        raise RenderError(f"archive {archive.id}: sha256 {archive.sha256!r} is not 64 hex digits")
    if archive.kind not in ("path", "database"):
        raise RenderError(f"archive {archive.id}: unknown kind {archive.kind!r}")


def _archive(archive: ArchiveRef, vm: VM) -> dict:
    source = _absolute(archive.source, "archive path")
    excludes = next((spec.excludes for spec in vm.archives if spec.path == source), [])
    return {"id": q(archive.id), "sha256": q(archive.sha256), "source": q(source),
            "excludes": q(", ".join(excludes))}


def _dump(archive: ArchiveRef, vm: VM) -> dict:
    return {"id": q(archive.id), "sha256": q(archive.sha256), "file": q(dump_file(archive, vm))}


def _dump_engine(archive: ArchiveRef) -> Engine:
    try:
        return databases.engine(archive.engine or databases.DEFAULT.name)
    except databases.Unsupported as exc:
        raise RenderError(f"archive {archive.id}: {exc}") from None


def dump_file(archive: ArchiveRef, vm: VM) -> str:
    """Where a database dump lies on the new VM: <database_data_dir>/<name><its engine's
    suffix> (.sql.zst; PostgreSQL's custom format .dump.zst), a server's globals as
    <engine>-globals.sql.zst."""
    server = _dump_engine(archive)
    name, suffix = archive.source, server.dump_suffix
    if server.globals_source is not None and name == server.globals_source:
        name, suffix = f"{server.name}-globals", DUMP_SUFFIX
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise RenderError(f"database name {name!r} cannot be a file name")
    data_dir = _absolute(vm.database_data_dir, "database_data_dir")
    return f"{data_dir.rstrip('/')}/{name}{suffix}"


def _absolute(path: str, what: str) -> str:
    """An absolute path that stays inside the new root once prefixed with it."""
    try:
        return plain_absolute_path(path)
    except ValueError as exc:
        raise RenderError(f"{what} {path!r} {exc}") from None


# --- local.start ---------------------------------------------------------------------------------

def render_local_start(plan: Plan, vm: VM, archives: list[ArchiveRef]) -> str:
    """The first-boot script the configuration script installs as /etc/ferryman/local.start."""
    return _render(LOCAL_START_TEMPLATE, build_local_start_context(plan, vm, archives))


def build_local_start_context(plan: Plan, vm: VM, archives: list[ArchiveRef]) -> dict:
    """local.start's template values, every one already shell-quoted. The database servers'
    (data dir, configuration, service, SQL) come from their engines (shared/databases): one
    MariaDB or MySQL server, PostgreSQL, or both."""
    dumps = [a for a in archives if a.kind == "database"]
    for archive in dumps:
        _check_archive(archive)
    servers = {server.family: server for server in databases.rebuild_engines(vm, plan)}
    # The MariaDB/MySQL section's values are always there (its functions are, unused without
    # it); DEFAULT's when the VM has no such server.
    server = servers.get(databases.DEFAULT.family)
    mysql = server or databases.DEFAULT
    postgresql = servers.get("postgresql")
    data_dir = _absolute(vm.database_data_dir, "database_data_dir")
    datadir = _engine_value(mysql.data_dir, data_dir, what=f"database_data_dir {data_dir!r}")
    address = str(ipaddress.ip_interface(str(vm.network.address)).ip)
    replica = _role(vm) == "db-replica"
    config = mysql.server_config(data_dir=datadir, address=address, memory_mb=vm.memory_mb,
                                 replica=replica)
    own = [a for a in dumps if _dump_engine(a) is not postgresql]
    return {
        "vm_name": q(vm.name),
        "group": q(plan.group),
        "role": q(_role(vm)),
        "has_mysql": q("yes" if server is not None else "no"),
        "server_datadir": q(datadir),
        "server_config": q(config),
        "server_config_file": q(mysql.config_file),
        "server_services": q(" ".join(mysql.services)),
        "server_option_files": q(" ".join(mysql.option_files)),
        "server_product": q(mysql.flavours()[0].product),
        "server_oldest": q(mysql.flavours()[0].title),
        "server_flavours": [_local_flavour(f) for f in mysql.flavours()],
        "dumps": [_local_dump(archive, vm, mysql) for archive in own] if server else [],
        "has_postgresql": q("yes" if postgresql is not None else "no"),
        **_local_postgresql(postgresql, plan, vm, dumps, data_dir, address),
    }


def _local_postgresql(server: Engine | None, plan: Plan, vm: VM, dumps: list[ArchiveRef],
                      data_dir: str, address: str) -> dict:
    """local.start's PostgreSQL values (empty without PostgreSQL): the cluster's major (the
    plan's, else what the legacy server answered when dumped), data dir, configuration,
    pg_hba lines for the master's replicas, this VM's replication slot, globals and dumps."""
    if server is None:
        return {"pg_major": q(""), "pg_datadir": q(""), "pg_config": q(""),
                "pg_config_file": q(""), "pg_port": q(""), "pg_slot": q(""), "pg_hba": q(""),
                "pg_globals": q(""), "pg_dumps": []}
    master = plan.vm(vm.replica_of) if vm.replica_of else vm
    named = {db.version for db in [*vm.databases, *master.databases]
             if db.version is not None and databases.engine(db.engine) is server}
    mine = [a for a in dumps if _dump_engine(a) is server]
    answered = {major(a.server_version) for a in mine if a.server_version}
    found = sorted(named) or sorted(answered)
    if len(found) != 1:
        raise RenderError(
            f"{vm.name}: the {server.title} version to rebuild is unknown (no dump recorded "
            f"the legacy server's): name it in the plan (databases[].version)" if not found
            else f"{vm.name}: its {server.title} dumps come from servers of versions "
                 f"{', '.join(found)}: name the one to rebuild in the plan (databases[].version)")
    datadir = _engine_value(server.data_dir, data_dir, what=f"database_data_dir {data_dir!r}")
    replicas = [str(ipaddress.ip_interface(str(other.network.address)).ip)
                for other in plan.vms if other.replica_of == vm.name]
    globals_file = next((dump_file(a, vm) for a in mine if a.source == server.globals_source),
                        "")
    return {
        "pg_major": q(found[0]),
        "pg_datadir": q(datadir),
        "pg_config": q(server.server_config(data_dir=datadir, address=address,
                                            memory_mb=vm.memory_mb,
                                            replica=_role(vm) == "db-replica")),
        "pg_config_file": q(server.config_file),
        "pg_port": q(server.default_port),
        "pg_slot": q(server.slot_name(vm.name)),
        "pg_hba": q("\n".join(server.hba_lines(replicas))),
        "pg_globals": q(globals_file),
        "pg_dumps": [{"file": q(dump_file(a, vm)), "name": q(a.source)} for a in mine
                     if a.source != server.globals_source],
    }


def _local_flavour(flavour: Flavour) -> dict:
    """One row of the statement forms local.start picks from by its server's version (the
    version is known only once the rebuilt server runs)."""
    return {
        "since": q(str(version_number(flavour.since))),
        "title": q(flavour.title), "replica": q(flavour.replica),
        "change_source": q(flavour.change_source), "source_option": q(flavour.source_option),
        "public_key": q(flavour.public_key), "binlog_status": q(flavour.binlog_status),
        "create_user": q(flavour.create_user),
        "alter_password": q("yes" if flavour.alter_password else "no"),
        "receiver_field": q(flavour.receiver_field), "applier_field": q(flavour.applier_field),
    }


def _local_dump(archive: ArchiveRef, vm: VM, server: Engine) -> dict:
    """One dump for local.start to load into `server`; `restore` is "no" for a dump of another
    engine (left in place, for a person to restore)."""
    name = archive.engine or databases.DEFAULT.name
    restores = databases.ENGINES.get(name) is server
    return {
        "engine": q(name),
        "restore": q("yes" if restores else "no"),
        "file": q(dump_file(archive, vm)),
        "name": q(archive.source),
        "create_sql": q(_engine_value(server.create_database_sql, archive.source)),
        "use_sql": q(_engine_value(server.use_database_sql, archive.source)),
    }


def _engine_value(function, *args, what: str = ""):
    """What the engine makes of a value, or a RenderError saying why it cannot (about `what`)."""
    try:
        return function(*args)
    except (ValueError, databases.Unsupported) as exc:
        raise RenderError(f"{what} {exc}" if what else str(exc)) from None


# --- rendering -----------------------------------------------------------------------------------

@cache
def _template(name: str) -> str:
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    # {{name}} would be HTML-escaped: every value goes in as {{{name}}}, already shell-quoted.
    escaped = re.findall(r"(?<!\{)\{\{\s*([A-Za-z_][\w.]*)\s*\}\}(?!\})", text)
    if escaped:
        raise RenderError(f"{name} uses HTML-escaping tags: {sorted(set(escaped))}")
    return text


def _render(name: str, context: dict) -> str:
    partials = {partial: _template(f"{partial}.mustache") for partial in PARTIALS}
    # chevron renders a missing value as "", which in a script would silently drop an argument:
    # it only warns (on stderr), so the warning is caught and made an error.
    warnings = io.StringIO()
    with contextlib.redirect_stderr(warnings):
        text = chevron.render(_template(name), context, partials_path=None,
                              partials_dict=partials, warn=True)
    if warnings.getvalue():
        raise RenderError(f"{name}: {warnings.getvalue().strip()}")
    return text
