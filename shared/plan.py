"""The plan: what an operator writes (YAML) to describe one group of VMs to migrate.

Validation here is the only gate: a plan that loads is one every service can act on, so
cross-field rules (names, disk space, replicas, addresses) live here, not in the services.
The plan is stored as JSON and re-validated by each service, so it must round-trip through
`model_dump(mode="json")` unchanged.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      ValidationError, ValidationInfo, field_validator, model_validator)

from shared.databases import ENGINES, engine
from shared.databases.postgresql import OLDEST_MAJOR as POSTGRESQL_OLDEST
from shared.host_keys import BadHostKey, parse_keys
from shared.systems.model import HostSystem, check_known
from shared.plan_errors import (Findings, PlanError, Problem, explain, read_document,
                                worded_pattern)

__all__ = [
    "ArchiveSpec", "CutoverSettings", "DatabaseSpec", "Disk", "DnsSettings", "Filesystem",
    "HttpCheck",
    "Network", "Plan", "PlanError", "Problem", "Role", "Source", "VM", "load_plan",
    "load_plan_file", "plain_absolute_path", "size_mib",
]

LABEL = worded_pattern(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
                       "lowercase letters, digits and '-' (a hostname label: at most 63 "
                       "characters, not starting or ending with '-')")
DATABASE_NAME = worded_pattern(r"^[A-Za-z0-9_]+$", "letters, digits and '_'")
ENV_NAME = worded_pattern(r"^[A-Za-z_][A-Za-z0-9_]*$",
                          "the name of an environment variable (letters, digits and '_', "
                          "not starting with a digit)")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_NOT_LV_CHAR = re.compile(r"[^A-Za-z0-9+_.-]")


def _not_bool(value: object) -> object:
    # YAML reads yes/no/on/off as booleans, and pydantic would take them as 1 and 0.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


def plain_absolute_path(value: str) -> str:
    """The rule for every path of the plan; the configurator's renderer applies it again."""
    if not value.startswith("/"):
        raise ValueError("must be an absolute path, starting with '/'")
    # One spelling per directory, so duplicates are caught and names derived from it are stable;
    # no '..', so a path prefixed with the new VM's root stays inside it.
    if "//" in value or posixpath.normpath(value) != value:
        raise ValueError("must be a plain absolute path (no trailing '/', '//', '.' or '..')")
    if "\0" in value:
        raise ValueError("must not contain NUL characters")
    return value


def size_mib(size_gb: float) -> int:
    """A filesystem's size in whole MiB, as the configuration script creates it; the rule for
    the plan's sizes and the renderer's one conversion."""
    try:
        mib = round(size_gb * 1024)
    except OverflowError:
        raise ValueError(f"{size_gb:g} GB is too large") from None
    if mib < 1:
        raise ValueError(f"{size_gb:g} GB is less than 1 MiB, the least a filesystem can have")
    return mib


def _filesystem_size(value: float) -> float:
    size_mib(value)
    return value


def _database_data_dir(value: str) -> str:
    # The path goes into the configuration of the database server each rebuilt database VM
    # gets: what its engine cannot write there is refused now, not when the VM is configured.
    for server in ENGINES.values():
        if server.rebuilds:
            server.data_dir(value)
    return value


def _mount_point(value: str) -> str:
    if value == "swap":
        return value
    if not value.startswith("/"):
        raise ValueError("must be an absolute path like /data, or the word swap")
    return plain_absolute_path(value)


def _hostname(value: str) -> str:
    labels = value.split(".")
    if len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError("must be a hostname like app1.shop.example (letters, digits and '-' "
                         "between dots, each part at most 63 characters)")
    return value


def _with_prefix(value: object) -> object:
    # Without a prefix ipaddress assumes /32 and the gateway would be unreachable.
    if isinstance(value, str) and "/" not in value:
        raise ValueError("needs its prefix length, e.g. 10.20.0.11/24")
    return value


def _address_text(value: object) -> object:
    # ipaddress takes a whole number as an address, and true is one: `public_ip: true` was
    # accepted as 0.0.0.1.
    if isinstance(value, (int, float)):
        raise ValueError("must be an IPv4 address written like 10.20.0.11, not a number or "
                         "true/false")
    return value


WholeNumber = Annotated[int, BeforeValidator(_not_bool)]
MAX_DISK_GB = 1024 * 1024
Address = Annotated[ipaddress.IPv4Address, BeforeValidator(_address_text)]
Size = Annotated[float, BeforeValidator(_not_bool), Field(gt=0, allow_inf_nan=False)]
Port = Annotated[WholeNumber, Field(ge=1, le=65535)]
AbsolutePath = Annotated[str, AfterValidator(plain_absolute_path)]


class _Model(BaseModel):
    # A field's docstring is its description in the plan's JSON Schema (docs/plan.schema.json).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Role(str, Enum):
    APP = "app"
    DB_MASTER = "db-master"
    DB_REPLICA = "db-replica"


class Disk(_Model):
    """A blank disk of the new VM. Its device name depends on its bus (vdX, sdX): the
    configuration script finds each disk by the serial the provider gave it, in plan order, and
    the first one gets /boot."""

    # No device name: the bus decides it, and the script finds the disk by its serial.
    # Bounded so that sizes stay numbers a float holds (the space check, the MiB of the script).
    size_gb: Annotated[WholeNumber, Field(gt=0, le=MAX_DISK_GB)]
    """Size in whole GB, 1 to 1048576 (1 PiB)."""
    bus: Literal["virtio", "scsi", "sata"] = "virtio"
    """virtio, scsi or sata: how the disk is attached (default virtio); the VM names it vdX on
    virtio, sdX on SCSI and SATA."""


class Filesystem(_Model):
    """A filesystem of the new VM: /boot is a partition, every other one an LVM logical volume
    named after its mount point."""

    mount: Annotated[str, AfterValidator(_mount_point)]
    """Absolute mount point written plainly (/data, not /data/), or the word swap."""
    size_gb: Annotated[Size, AfterValidator(_filesystem_size)]
    """Size in GB (fractions allowed, at least 1 MiB)."""
    type: Literal["xfs", "ext3", "ext4", "swap"] | None = Field(None, validate_default=True)
    """xfs, ext3, ext4 or swap; default: swap for swap, ext3 for /boot, else xfs. Only swap has
    type swap."""

    @field_validator("type")
    @classmethod
    def _type_for_mount(cls, value: str | None, info: ValidationInfo) -> str | None:
        mount = info.data.get("mount")
        if mount is None:
            return value  # the mount itself is wrong and reported
        if value is None:
            return "swap" if mount == "swap" else "ext3" if mount == "/boot" else "xfs"
        if (value == "swap") != (mount == "swap"):
            raise ValueError("swap, and only swap, has type swap")
        return value

    @property
    def lv_name(self) -> str:
        """The LVM logical volume name: "/" is root, "/var/lib/mysql" is var_lib_mysql."""
        if self.mount == "/":
            return "root"
        return _NOT_LV_CHAR.sub("_", self.mount.lstrip("/"))


class ArchiveSpec(_Model):
    """A path of the legacy host copied to the new VM (tar + zstd)."""

    path: AbsolutePath  # on the legacy host
    """Absolute path on the legacy host (/ for the whole system, /data ...); unique per VM."""
    excludes: list[str] = []
    """Patterns relative to the path and anchored there: tmp/* leaves out what is below <path>/tmp,
    tmp the directory too."""


# The engines shared/databases knows, by the names a plan uses.
EngineName = Literal[tuple(ENGINES)]  # type: ignore[valid-type]


class DatabaseSpec(_Model):
    """A database dumped on the legacy side and restored on the new VM."""

    engine: EngineName
    """mariadb, mysql or postgresql. MariaDB and MySQL: the statements follow the server's own
    version (MySQL 5.7 and later, MariaDB 10.3 and later)."""
    name: str = Field(pattern=DATABASE_NAME)
    """The database's name: letters, digits and _."""
    host: str = Field("127.0.0.1", min_length=1)
    """The database server as seen from the source; 127.0.0.1 or localhost with no port: its local
    socket."""
    port: Port | None = None
    """Default 3306 for mariadb and mysql, 5432 for postgresql."""
    user: str | None = None
    """Who dumps the database."""
    # The NAME of an environment variable holding the password: secrets never live in a plan.
    password_env: str | None = Field(None, pattern=ENV_NAME)
    """The NAME of an environment variable (read by the archiver) holding the password; passwords
    never go in a plan."""
    version: str | None = Field(None, pattern=worded_pattern(
        r"^[1-9][0-9]?$", "a PostgreSQL major version, like 15"))
    """postgresql only: the major version (12 or later) whose binaries the rebuilt VM's cluster
    runs, e.g. 16 to load a 15 server's dumps into 16; default: the legacy server's own (asked
    when it is dumped). Every postgresql database of a VM names the same one, or none."""

    @model_validator(mode="after")
    def _version_for_postgresql(self) -> DatabaseSpec:
        found = Findings()
        if self.version is not None:
            if self.engine != "postgresql":
                found.add(("version",), f"only a postgresql database names a version; "
                                        f"{self.engine} follows its server's own")
            elif int(self.version) < POSTGRESQL_OLDEST:
                found.add(("version",), f"PostgreSQL {self.version} is older than "
                                        f"{POSTGRESQL_OLDEST}, the oldest Ferryman rebuilds")
        found.raise_any()
        return self

    @property
    def effective_port(self) -> int:
        return self.port or engine(self.engine).default_port


def _known_system(system: HostSystem | None) -> HostSystem | None:
    return None if system is None else check_known(system)


def _public_host_keys(lines: list[str] | None) -> list[str] | None:
    """Each line a public host key (shared/host_keys.py), or the plan is refused saying why."""
    if lines is None:
        return None
    try:
        parse_keys(lines)
    except BadHostKey as exc:
        raise ValueError(str(exc)) from None
    return lines


class Source(_Model):
    """Where the archiver reads the legacy VM."""

    kind: Literal["local", "ssh"] = "local"
    """local (a directory standing for the host's /) or ssh (the legacy host itself)."""
    # local: a directory standing for the host's "/" (relative to the plan file's folder)
    root: str | None = Field(None, min_length=1)
    """local: a directory standing for the legacy host's /, required; relative to the plan file's
    folder."""
    host: str | None = Field(None, min_length=1)
    """ssh: the legacy host's address or name, required."""
    port: Port = 22
    """ssh: the SSH port."""
    user: str = Field("root", min_length=1)
    """ssh: who reads the host; reading all of / needs root."""
    key_file: str | None = None
    """ssh: the private key to log in with (default: the archiver's own, FERRY_SSH_KEY_FILE)."""
    host_keys: Annotated[list[str] | None, AfterValidator(_public_host_keys)] = None
    """ssh: the legacy host's public host keys (`TYPE BASE64`, one line per key type, as
    `ssh-keyscan HOST` prints them after the host name), checked before they are trusted: the
    archiver and the cutover then reach the host only if it presents one of them. Without
    them, the host's key is recorded at its first archive and held to ever after."""
    system: Annotated[HostSystem | None, AfterValidator(_known_system)] = None
    """The legacy host's system (family, release, init, network, interface, initramfs), when it
    is not to be read from its root: by default the archiver reads it from the host's own files
    when it archives "/". Given here, it is used as it is; either way a system Ferryman cannot
    rebuild is refused before any VM is created."""

    @field_validator("root")
    @classmethod
    def _resolve_root(cls, root: str | None, info: ValidationInfo) -> str | None:
        base_dir = (info.context or {}).get("base_dir")
        if root is None or base_dir is None or os.path.isabs(root):
            return root
        return os.path.normpath(os.path.join(os.path.abspath(base_dir), root))

    @model_validator(mode="after")
    def _kind_needs(self) -> Source:
        found = Findings()
        if self.kind == "local" and self.root is None:
            found.add(("root",), "is required when kind is local")
        if self.kind == "ssh" and self.host is None:
            found.add(("host",), "is required when kind is ssh")
        if self.kind == "local" and self.host_keys is not None:
            found.add(("host_keys",), "is for kind ssh only")
        found.raise_any()
        return self


class Network(_Model):
    """The new VM's network settings on its group's network."""

    address: Annotated[ipaddress.IPv4Interface, BeforeValidator(_with_prefix),
                       BeforeValidator(_address_text)]
    """IPv4 address with its prefix length, e.g. 10.20.0.11/24; unique in the group."""
    gateway: Address | None = None
    """IPv4 default gateway, inside the address's network."""
    dns: list[Address] = []
    """IPv4 addresses of the resolvers."""
    hostname: Annotated[str, AfterValidator(_hostname)]
    """Hostname or FQDN (letters, digits, - between dots); unique in the group."""
    public_ip: Address | None = None  # the legacy side's; cutover forwards it
    """The legacy side's public IPv4 address, which cutover forwards to the new VM; unique in the
    group."""

    @model_validator(mode="after")
    def _gateway_reachable(self) -> Network:
        found = Findings()
        if self.gateway is not None and self.gateway not in self.address.network:
            found.add(("gateway",), f"{self.gateway} is not in {self.address.network}")
        found.raise_any()
        return self


class VM(_Model):
    """One VM of the group: the blank machine to create and what to copy onto it."""

    name: str = Field(pattern=LABEL)
    """The VM's name: lowercase letters, digits and -, at most 63 characters; unique in the
    group."""
    role: Role = Role.APP
    """app, db-master or db-replica."""
    cpus: Annotated[WholeNumber, Field(ge=1, le=64)]
    """Virtual CPUs, 1 to 64."""
    memory_mb: Annotated[WholeNumber, Field(ge=256, le=1048576)]
    """Memory in MB, 256 to 1048576."""
    disks: list[Disk] = Field(min_length=1)
    """The blank disks, at least one; the first holds /boot, and all are LVM physical
    volumes."""
    filesystems: list[Filesystem] = Field(min_length=1)
    """The filesystems, at least one, with exactly one /; they must fit in the disks."""
    archives: list[ArchiveSpec] = []
    """What to copy from the legacy host."""
    databases: list[DatabaseSpec] = []
    """Databases dumped on the legacy side, restored on the new VM."""
    database_data_dir: Annotated[AbsolutePath, AfterValidator(_database_data_dir)] = "/db"
    """Where restored databases live on the new VM: an absolute path without '"', '\\' or
    control characters (the database server's configuration holds it)."""
    replica_of: str | None = None
    """For a db-replica (required there, refused elsewhere): the name of a db-master of this
    group."""
    network: Network
    """The new VM's network settings."""
    source: Source | None = None
    """Where to read the legacy VM; none for a brand-new VM."""

    @property
    def boot(self) -> Filesystem:
        """The /boot partition, as planned or the default one."""
        planned = [fs for fs in self.filesystems if fs.mount == "/boot"]
        return planned[0] if planned else Filesystem(mount="/boot", size_gb=0.5, type="ext3")

    @property
    def logical_volumes(self) -> list[Filesystem]:
        """Everything but /boot, parents before children (so mounting in order works), swap last."""
        volumes = [fs for fs in self.filesystems if fs.mount != "/boot"]
        return sorted(volumes, key=_mount_order)

    @property
    def root_archive(self) -> ArchiveSpec | None:
        return next((a for a in self.archives if a.path == "/"), None)

    @model_validator(mode="after")
    def _consistent(self) -> VM:
        found = Findings()
        self._check_filesystems(found)
        self._check_space(found)
        _check_unique(found, [a.path for a in self.archives], "archives", "path",
                      "duplicate archive path")
        if self.role == Role.DB_REPLICA and not self.replica_of:
            found.add(("replica_of",), "is required for a db-replica (name its db-master)")
        versions = {db.version for db in self.databases if db.version is not None}
        if len(versions) > 1:
            found.add(("databases",), f"its postgresql databases name different versions "
                                      f"({', '.join(sorted(versions))}): one cluster runs one")
        if self.role != Role.DB_REPLICA and self.replica_of is not None:
            found.add(("replica_of",), f"only a db-replica follows a master, this VM is "
                                       f"{self.role.value}")
        found.raise_any()
        return self

    def _check_filesystems(self, found: Findings) -> None:
        mounts = [fs.mount for fs in self.filesystems]
        if "/" not in mounts:
            found.add(("filesystems",), "needs a '/' filesystem")
        _check_unique(found, mounts, "filesystems", "mount", "duplicate mount point")
        # Distinct mounts can still collide as LV names (/var/lib and /var_lib).
        owners: dict[str, int] = {}
        for i, fs in enumerate(self.filesystems):
            if fs.mount == "/boot":
                continue  # a partition, not an LV
            first = owners.setdefault(fs.lv_name, i)
            if self.filesystems[first].mount != fs.mount:
                found.add(("filesystems", i, "mount"),
                          f"its LV name '{fs.lv_name}' is also that of "
                          f"{self.filesystems[first].mount} (filesystems[{first}])")

    def _check_space(self, found: Findings) -> None:
        need = self.boot.size_gb + sum(fs.size_gb for fs in self.logical_volumes)
        have = sum(disk.size_gb for disk in self.disks)
        # Partition alignment, LVM metadata and extent rounding take a little of each disk, so
        # a plan that fills its disks to the byte would fail at lvcreate on the new VM.
        usable = have - LVM_RESERVE_GB * len(self.disks)
        if need > usable + 1e-9:
            found.add(("filesystems",), f"need {_gb(need)} GB but the disks hold {_gb(have)} GB"
                      f" ({_gb(usable)} GB usable after {_gb(LVM_RESERVE_GB)} GB per disk for"
                      " partitioning and LVM)")


class HttpCheck(_Model):
    """An HTTP check that must pass before traffic moves."""

    path: str = Field("/", pattern=worded_pattern(r"^/", "a URL path starting with '/'"))
    """URL path, starting with /."""
    # A hostname, checked: `ferry verify` prints it in hosts-file and curl lines to paste.
    host: Annotated[str, AfterValidator(_hostname)] | None = None
    """Host header to send (default: the VM's hostname); a hostname like shop.example."""
    vm: str | None = None
    """The VM to check (default: every app VM of the group)."""
    expect_status: Annotated[WholeNumber, Field(ge=100, le=599)] = 200
    """The HTTP status expected, 100 to 599."""
    contains: str | None = None
    """Text the answer's body must contain."""


class DnsSettings(_Model):
    """The public DNS zone the cutover changes, by RFC 2136 dynamic updates to its primary
    server, signed with the TSIG key in the migration service's FERRY_DNS_KEY_FILE."""

    server: str = Field(pattern=worded_pattern(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
                                               "host or host:port"))
    """The zone's primary server, host or host:port (port 53 if not given)."""
    zone: Annotated[str, AfterValidator(_hostname)]
    """The zone's name, e.g. shop.example."""
    records: dict[Annotated[str, AfterValidator(_hostname)], str] = Field(min_length=1)
    """Each name (in the zone) and the VM whose new address it gets at cutover."""

    @property
    def host(self) -> str:
        return self.server.rsplit(":", 1)[0] if ":" in self.server else self.server

    @property
    def port(self) -> int:
        return int(self.server.rsplit(":", 1)[1]) if ":" in self.server else 53


class CutoverSettings(_Model):
    """How the group is cut over once ready."""

    mode: Literal["dump-and-restore", "replication"] = "dump-and-restore"
    """dump-and-restore, or replication (hand-off from the legacy master)."""
    dns_ttl_s: Annotated[WholeNumber, Field(ge=1)] = 60
    """DNS TTL (seconds, at least 1) lowered ahead of the cutover."""
    shared_paths: list[AbsolutePath] = []
    """Absolute paths copied again (rsync catch-up) at cutover."""
    excludes: list[str] = []
    """rsync exclude patterns for the shared paths."""
    checks: list[HttpCheck] = []
    """HTTP checks that must pass before traffic moves."""
    services: list[Annotated[str, Field(pattern=worded_pattern(
        r"^[A-Za-z0-9@_.:-]+$", "a systemd unit name"))]] = []
    """systemd units started on the app VMs in the window (the application)."""
    dns: DnsSettings | None = None
    """The public zone whose names move to the new VMs (none: DNS is left to you)."""


# The phases a plan may give deadlines (shared/states.DEADLINE_PHASES; a unit test compares).
DeadlinePhase = Literal["archiving", "creating", "configuring", "provisioning", "provisioned",
                        "loading", "replicating"]
Seconds = Annotated[float, BeforeValidator(_not_bool), Field(ge=0, le=7 * 24 * 3600,
                                                              allow_inf_nan=False)]


class Plan(_Model):
    """One group of VMs migrating together."""

    group: str = Field(pattern=LABEL)
    """The group's name: lowercase letters, digits and -, at most 63 characters, not starting or
    ending with -."""
    description: str = ""
    """Free text about the group."""
    legacy_site: str | None = Field(None, pattern=LABEL)
    """The legacy site the group's VMs are archived from (a datacenter, a customer's rack):
    at most FERRY_LIMIT_ARCHIVES_PER_SITE VMs are archived at once per site, across groups,
    so production there keeps serving. Default: the group's own name (each group its own
    site). Same rules as `group`."""
    vms: list[VM] = Field(min_length=1)
    """The group's VMs, at least one."""
    cutover: CutoverSettings = CutoverSettings()
    """How the group is cut over once ready."""
    deadlines: dict[DeadlinePhase, Seconds] = {}
    """This group's deadlines, overriding the settings' (FERRY_DEADLINE_<PHASE>_S): per phase
    (archiving, creating, configuring, provisioning, provisioned, loading, replicating), the
    longest its VMs may stay silent there, in seconds (0: no deadline; at most a week). A VM
    silent longer fails, which halts the group."""

    @property
    def site(self) -> str:
        """The legacy site its archives count against (docs/operations.md, "Limits")."""
        return self.legacy_site or self.group

    def vm(self, name: str) -> VM:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        found = Findings()
        _check_unique(found, [vm.name for vm in self.vms], "vms", "name", "duplicate VM name")
        networks = [vm.network for vm in self.vms]
        _check_unique(found, [n.address.ip for n in networks], "vms", "network.address",
                      "duplicate address")
        _check_unique(found, [n.hostname.lower() for n in networks], "vms", "network.hostname",
                      "duplicate hostname")
        _check_unique(found, [n.public_ip for n in networks], "vms", "network.public_ip",
                      "duplicate public IP")
        masters = {vm.name for vm in self.vms if vm.role == Role.DB_MASTER}
        for i, vm in enumerate(self.vms):
            if vm.role == Role.DB_REPLICA and vm.replica_of and vm.replica_of not in masters:
                found.add(("vms", i, "replica_of"),
                          f"no db-master named '{vm.replica_of}' in this group")
        self._check_cutover(found)
        found.raise_any()
        return self


    def _check_cutover(self, found: Findings) -> None:
        names = {vm.name for vm in self.vms}
        for i, check in enumerate(self.cutover.checks):
            if check.vm is not None and check.vm not in names:
                found.add(("cutover", "checks", i, "vm"), f"no VM named '{check.vm}' in this group")
        dns = self.cutover.dns
        if dns is None:
            return
        for name, vm in dns.records.items():
            where = ("cutover", "dns", "records", name)
            if vm not in names:
                found.add(where, f"no VM named '{vm}' in this group")
            if name != dns.zone and not name.endswith("." + dns.zone):
                found.add(where, f"'{name}' is not in the zone {dns.zone}")


def _check_unique(found: Findings, values: list, where: str, field: str, what: str) -> None:
    """Report every repeat of a value at the later entry, naming the first one."""
    first: dict = {}
    for i, value in enumerate(values):
        if value is None:
            continue
        if value in first:
            found.add((where, i, *field.split(".")),
                      f"{what} '{value}' (also {where}[{first[value]}])")
        first.setdefault(value, i)


def _mount_order(fs: Filesystem) -> tuple[bool, int]:
    return fs.mount == "swap", 0 if fs.mount == "/" else fs.mount.count("/")


LVM_RESERVE_GB = 0.05


def _gb(amount: float) -> str:
    return f"{round(amount, 3):g}"


def load_plan(text: str, source: str = "<plan>", base_dir: Path | None = None) -> Plan:
    """Validate a plan written as YAML (or JSON); every problem is reported in one PlanError.

    A relative local source root is resolved against `base_dir` (the plan file's folder).
    """
    data, document = read_document(text, source)
    try:
        return Plan.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise PlanError(explain(exc, Plan, document), source) from None


def load_plan_file(path: Path) -> Plan:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        before = exc.object[:exc.start]
        where = (before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1)
        raise PlanError([Problem("", f"is not UTF-8 text ({exc.reason} at byte {exc.start})",
                                 *where)], str(path)) from None
    return load_plan(text, source=str(path), base_dir=path.resolve().parent)
