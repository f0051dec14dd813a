"""Archiving live legacy hosts over SSH: the example site (lab/legacy: sshd, nginx, MariaDB and
PostgreSQL chrooted in network namespaces) read by the archiver's real code path
(`_take_archives` with the shipped examples/shop.yaml), then the site taken down without a trace.

Uses the default settings' lab folder, so the hosts' roots built by `python -m lab.legacy up`
are reused (a warm `up` takes about a second, a cold one about 12 s); a site already up is
taken over and taken down at the end.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
import pytest_asyncio

from lab import legacy
from lab.legacy import mounts, net, procs
from lab.legacy.site import OWNER_RECORD, PSQL
from services.archiver.archive import ArchiveError
from services.archiver.handlers import _take_archives
from services.archiver.ssh import SshTree
from services.archiver.system import read_host_system
from shared.databases import DumpError
from shared.plan import ArchiveSpec, DatabaseSpec, Source, load_plan_file
from shared.settings import Settings
from tests.lab.conftest import lab_missing

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

REPO = Path(__file__).resolve().parents[2]
PLAN = load_plan_file(REPO / "examples" / "shop.yaml")
PSEUDO = ("proc", "sys", "dev", "run", "tmp")


@pytest.fixture(scope="module")
def lab() -> Settings:
    settings = Settings()
    reason = lab_missing(settings, vms=False)
    if reason:
        pytest.skip(reason)
    return settings


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(lab: Settings):
    site = await legacy.up(lab)
    yield site
    await legacy.down(lab)  # again, should a test have failed before test_down_...


# --- helpers ----------------------------------------------------------------------------------

def archive_entries(archive: Path) -> list[tuple[str, tuple]]:
    """(name, what) per member in stream order; what = kind, content sha256 or link target,
    mode, uid, gid. A hard link carries its target's content hash."""
    zstd = subprocess.Popen(["zstd", "-dc", str(archive)], stdout=subprocess.PIPE)
    entries, contents = [], {}
    with tarfile.open(fileobj=zstd.stdout, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./") or "."
            if member.isfile():
                contents[name] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
                what = ("file", contents[name])
            elif member.islnk():
                what = ("file", contents[member.linkname.removeprefix("./")])
            elif member.issym():
                what = ("link", member.linkname)
            else:
                what = ("dir" if member.isdir() else member.type.decode(), None)
            mode = None if member.issym() else member.mode & 0o7777
            entries.append((name, (*what, mode, member.uid, member.gid)))
    assert zstd.wait() == 0
    return entries


def archive_names(archive: Path) -> set[str]:
    listing = subprocess.run(f"zstd -dc '{archive}' | tar -t", shell=True, check=True,
                             capture_output=True, text=True).stdout
    return {name.removeprefix("./") for name in listing.splitlines()}


def host_tree(base: Path, skip_below: tuple[str, ...] = (),
              hash_it=lambda name: True) -> dict[str, tuple]:
    """The same view of a host's folder read directly (what the host holds), without
    descending into `skip_below` (their directories themselves listed)."""
    tree = {}
    for folder, dirs, files in os.walk(base):
        relative = Path(folder).relative_to(base).as_posix()
        if relative in skip_below:
            dirs[:] = []
            files = []
        for name in [".", *dirs, *files] if relative == "." else [*dirs, *files]:
            path = base / relative / name if name != "." else base
            key = os.path.normpath(f"{relative}/{name}") if name != "." else "."
            st = path.lstat()
            if path.is_symlink():
                tree[key] = ("link", os.readlink(path), None, st.st_uid, st.st_gid)
            elif path.is_dir():
                tree[key] = ("dir", None, st.st_mode & 0o7777, st.st_uid, st.st_gid)
            else:
                digest = (hashlib.sha256(path.read_bytes()).hexdigest() if hash_it(key)
                          else "not compared")
                tree[key] = ("file", digest, st.st_mode & 0o7777, st.st_uid, st.st_gid)
    return tree


def vm(name: str, **changes):
    return PLAN.vm(name).model_copy(update=changes)


# --- the tests ----------------------------------------------------------------------------------

async def test_app1_data_and_root_arrive_as_they_are_on_the_host(site, lab, tmp_path):
    """app1's /data archive holds exactly the host's /data (names, contents, modes, owners,
    links; names with spaces and binaries included) minus the plan's excludes, whose
    directories stay; its root archive leads with the account files, has every entry of the
    host's / with the same contents, and nothing below proc, sys, dev, run, tmp or data."""
    results, system = await _take_archives(PLAN.vm("app1"), tmp_path, uuid.uuid4(), lab)
    root_result, data_result = results
    assert (root_result.source_path, data_result.source_path) == ("/", "/data")
    # Read over SSH from the host's root: the lab's base image.
    assert (system.family, system.release, system.init, system.network, system.initramfs) == (
        "debian", "12", "systemd", "ifupdown", "initramfs-tools")
    host_root = site.hosts["app1"].root

    data = dict(archive_entries(data_result.file))
    expected = host_tree(host_root / "data", skip_below=("shared/tmp", "sessions"))
    assert data == expected
    assert len([e for e in data.values() if e[0] == "file"]) > 250
    assert "shared/docs/café menu.txt" in data and "shared/tmp" in data
    assert data["shared/images/products/product-001.jpg"][3:] == (33, 33)  # www-data

    entries = archive_entries(root_result.file)
    assert [name for name, _ in entries[:5]] == [
        "etc/passwd", "etc/group", "etc/shadow", "etc/gshadow", "."]
    archived = dict(entries)
    for skipped in (*PSEUDO, "data"):
        assert archived[skipped][0] == "dir"
        assert not [n for n in archived if n.startswith(f"{skipped}/")]
    # Logs change while tar reads them (this test's own requests among the writers).
    expected = host_tree(host_root, skip_below=(*PSEUDO, "data"),
                         hash_it=lambda name: not name.startswith("var/log/"))
    for name, what in expected.items():
        if what[1] == "not compared":
            archived[name] = (archived[name][0], "not compared", *archived[name][2:])
    assert archived == expected
    print(f"\napp1: / {root_result.size / 1e6:.1f} MB, /data {data_result.size / 1e6:.1f} MB "
          f"(compressed)")


async def test_db1_root_and_database_dump_load_elsewhere(site, lab, tmp_path):
    """db1's root archive leaves MariaDB's and PostgreSQL's data directories empty (the data
    travels as dumps), and its dump of `shop`, taken on db1 by socket, loads into db2 with
    every row."""
    results, _ = await _take_archives(PLAN.vm("db1"), tmp_path, uuid.uuid4(), lab)
    assert [(r.kind, r.source_path, r.engine if r.kind == "database" else None)
            for r in results] == [("path", "/", None),
                                  ("database", "postgresql:globals", "postgresql"),
                                  ("database", "shop", "mariadb"),
                                  ("database", "stock", "postgresql")]
    root_result, _, dump_result, _ = results
    archived = archive_names(root_result.file)
    assert "var/lib/mysql/" in archived and "etc/mysql/mariadb.conf.d/60-shop.cnf" in archived
    assert "etc/postgresql/15/main/conf.d/60-stock.conf" in archived
    for data in ("var/lib/mysql/", "var/lib/postgresql/"):
        assert data in archived
        assert not [n for n in archived if n.startswith(data) and n != data]
    sql = subprocess.run(["zstd", "-dc", str(dump_result.file)], capture_output=True,
                         check=True).stdout
    await site.run("db2", "mariadb", "-e",
                   "DROP DATABASE IF EXISTS restored; CREATE DATABASE restored")
    await site.run("db2", "mariadb", "restored", input=sql)
    count = "SELECT COUNT(*), SUM(quantity) FROM {}.orders"
    assert (await site.run("db2", "mariadb", "-N", "-e", count.format("restored"))
            == await site.run("db1", "mariadb", "-N", "-e", count.format("shop")))
    await site.run("db2", "mariadb", "-e", "DROP DATABASE restored")


async def test_db1_postgresql_is_probed_and_dumped_over_ssh(site, lab, tmp_path):
    """db1's PostgreSQL, asked and dumped over SSH as the postgres OS user: its version
    recorded with the dumps, the globals with the role stock_app and its password, and a
    custom-format dump of `stock` that pg_restore loads with every row and its owner. A
    database the plan names and the server lacks fails the VM before anything is archived."""
    stock = [db for db in PLAN.vm("db1").databases if db.engine == "postgresql"]
    results, _ = await _take_archives(vm("db1", archives=[], databases=stock), tmp_path,
                                      uuid.uuid4(), lab)
    assert [(r.source_path, r.server_version[:2]) for r in results] == [
        ("postgresql:globals", "15"), ("stock", "15")]
    globals_sql = subprocess.run(["zstd", "-dc", str(results[0].file)], capture_output=True,
                                 check=True).stdout.decode()
    assert "CREATE ROLE stock_app;" in globals_sql
    assert "ALTER ROLE stock_app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN " \
           "NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$" in globals_sql
    dump = subprocess.run(["zstd", "-dc", str(results[1].file)], capture_output=True,
                          check=True).stdout
    assert dump.startswith(b"PGDMP")  # pg_dump's custom format
    await site.run("db1", *PSQL, "-d", "postgres", "-c", "DROP DATABASE IF EXISTS restored",
                   "-c", "CREATE DATABASE restored")
    try:
        await site.run("db1", "runuser", "-u", "postgres", "--", "pg_restore",
                       "--exit-on-error", "-d", "restored", input=dump)
        query = ("SELECT count(*), sum(delta), string_agg(DISTINCT tableowner, ',') FROM "
                 "movements, pg_tables WHERE tablename = 'movements'")
        restored = await site.run("db1", *PSQL, "-d", "restored", "-c", query)
        assert restored == await site.run("db1", *PSQL, "-d", "stock", "-c", query)
        assert restored.strip().endswith("|stock_app")
    finally:
        await site.run("db1", *PSQL, "-d", "postgres", "-c", "DROP DATABASE restored")
    missing = [*stock, DatabaseSpec(engine="postgresql", name="nosuch")]
    with pytest.raises(DumpError) as caught:
        await _take_archives(vm("db1", databases=missing), tmp_path, uuid.uuid4(), lab)
    assert str(caught.value) == ("db1: PostgreSQL server of postgresql database 'stock' on "
                                 "its local socket: the server has no database 'nosuch': the "
                                 "plan names it, the host has not")


async def test_a_dump_with_a_password_over_tcp(site, lab, tmp_path, monkeypatch):
    """A dump user with a password (quotes, blanks and $ in it) over TCP to 127.0.0.1:3306 as
    db1 sees it: the password goes by the archiver's environment variable and ssh's stdin."""
    password = 'it\'s a "pass" $word'
    quoted = password.replace("'", "''")
    await site.run("db1", "mariadb", "-e", f"""
        CREATE USER IF NOT EXISTS 'ferry_dump'@'127.0.0.1' IDENTIFIED BY '{quoted}';
        GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON shop.*
          TO 'ferry_dump'@'127.0.0.1';""")
    monkeypatch.setenv("FERRY_T_SHOP_PASSWORD", password)
    spec = DatabaseSpec(engine="mariadb", name="shop", port=3306, user="ferry_dump",
                        password_env="FERRY_T_SHOP_PASSWORD")
    [dump], system = await _take_archives(vm("db1", archives=[], databases=[spec]), tmp_path,
                                          uuid.uuid4(), lab)
    assert system is None  # no root archive: the system is not read
    sql = subprocess.run(["zstd", "-dc", str(dump.file)], capture_output=True, check=True).stdout
    assert b"Blue teapot" in sql
    monkeypatch.setenv("FERRY_T_SHOP_PASSWORD", "wrong")
    with pytest.raises(DumpError) as caught:
        await _take_archives(vm("db1", archives=[], databases=[spec]), tmp_path, uuid.uuid4(),
                             lab)
    assert "db1: dump of mariadb database 'shop'" in str(caught.value)
    assert "Access denied for user 'ferry_dump'" in str(caught.value)


async def test_a_file_changing_while_read_is_a_warning(site, lab, tmp_path):
    """A log appended to on the live host while tar reads it: the archive is kept, with
    tar's "file changed as we read it" as a warning of the result."""
    await site.run("app1", "sh", "-c", "mkdir -p /srv/live && head -c 32M /dev/urandom "
                                       "> /srv/live/big.log")
    writer = await site.spawn("app1", "sh", "-c",
                              "while :; do echo line >> /srv/live/big.log; done")
    try:
        planned = vm("app1", archives=[ArchiveSpec(path="/srv/live")])
        [result], _ = await _take_archives(planned, tmp_path, uuid.uuid4(), lab)
    finally:
        writer.kill()
        await writer.wait()
        await site.run("app1", "rm", "-rf", "/srv/live")
    assert len(result.warnings) == 1
    assert "file changed as we read it" in result.warnings[0]


async def test_unreachable_host_refused_key_and_remote_failure_are_told_apart(site, lab,
                                                                               tmp_path):
    """Each failure names the VM, the host and the cause: nothing listening, a key the host
    does not know, a host key that is not the recorded one, tar failing on the host."""
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cases = [
        (vm("app1", source=Source(kind="ssh", host="10.213.0.11", port=2)),
         "app1: cannot reach 10.213.0.11 port 2 over SSH: "),
        (vm("app1", source=Source(kind="ssh", host="10.213.0.11", key_file=str(key))),
         f"app1: 10.213.0.11 port 22 refused the SSH key {key} for user root: "),
        (vm("app1", archives=[ArchiveSpec(path="/no/such/dir")]),
         "app1: archive of /no/such/dir from root@10.213.0.11:22 over SSH failed: tar on "
         "10.213.0.11 exited 2: tar: /no/such/dir: Cannot open: No such file or directory"),
    ]
    for planned, message in cases:
        with pytest.raises(ArchiveError) as caught:
            await _take_archives(planned, tmp_path, uuid.uuid4(), lab)
        assert str(caught.value).startswith(message), str(caught.value)
    known_hosts = tmp_path / "known_hosts"
    other_key = Path(f"{key}.pub").read_text().split()
    known_hosts.write_text(f"10.213.0.11 {other_key[0]} {other_key[1]}\n")
    impostor = SshTree("10.213.0.11", 22, "root", lab.ssh_identity, known_hosts)
    with pytest.raises(ArchiveError, match="host key of 10.213.0.11 port 22 is not the one"):
        await impostor.probe()


# Names that split a listing, start an option, quote, or are no UTF-8 at all.
AWKWARD_NAMES = [b"two words.txt", b"line\nbreak", b"it's \"quoted\"", b"-starts-with-dash",
                 b"caf\xe9 latin-1", b"$(touch pwned)", b" leading space", b"tab\there"]


def awkward_tree(base: Path) -> None:
    for n, name in enumerate(AWKWARD_NAMES):
        folder = base / os.fsdecode(name) if n % 2 else base
        folder.mkdir(parents=True, exist_ok=True)
        (folder / os.fsdecode(name)).write_bytes(name * (n + 1))


async def test_paths_are_data_whatever_their_bytes(site, lab, tmp_path):
    """A shared path with a space, holding names with newlines, quotes, a leading '-', shell
    syntax and bytes that are no UTF-8, arrives byte-identical: in app1's archive, and through
    the cutover's two rsync passes (legacy app1 -> this machine -> db2, standing in for the
    new VM), with nothing run that a name spelled."""
    from services.cutover.steps import GroupRunbook, Machine
    from shared.providers.fake import FakeProvider
    from shared.ssh import Remote

    shared = "/data/shared dir"
    source = site.hosts["app1"].root / shared.lstrip("/")
    target = site.hosts["db2"].root / shared.lstrip("/")
    awkward_tree(source)
    try:
        results, _ = await _take_archives(vm("app1", archives=[ArchiveSpec(path=shared)]),
                                          tmp_path / "archives", uuid.uuid4(), lab)
        assert dict(archive_entries(results[0].file)) == host_tree(source)

        def remote(name: str) -> Remote:
            return Remote(f"legacy {name}", site.address(name), 22, "root", lab.ssh_identity,
                          lab.ssh_known_hosts)
        machine = Machine(PLAN.vm("app1"), uuid.uuid4(), site.address("db2"), remote("db2"),
                          remote("app1"))
        book = GroupRunbook(PLAN, [machine], FakeProvider(), None, tmp_path / "staging")
        book.settings = book.settings.model_copy(update={"shared_paths": [shared],
                                                         "excludes": []})
        done = await book.rsync()
        assert done == f"app1 {shared}: {len(AWKWARD_NAMES)} files from the legacy host, " \
                       f"{len(AWKWARD_NAMES)} to the new VM", done
        assert host_tree(target) == host_tree(source)
        # Where a name run as a command would have left its file: the remote shells' and this
        # process's working folders, and the folders the names live in (not a walk of the
        # roots: their /proc is mounted).
        places = [Path.cwd(), tmp_path, *[site.hosts[h].root / sub for h in ("app1", "db2")
                                          for sub in ("", "root", shared.lstrip("/"))]]
        assert not [p for p in places if (p / "pwned").exists()]
        await book.close()
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(source), str(target)], check=True)


@pytest.mark.parametrize("host, expected", [
    ("app1", ("debian", "12", "systemd", "ifupdown", None)),
    ("old1", ("debian", "11", "sysvinit", "ifupdown", "eth0")),
    ("net1", ("debian", "12", "systemd", "systemd-networkd", "ens3")),
    ("plan1", ("debian", "12", "systemd", "netplan", "enp1s0")),
])
async def test_each_hosts_system_is_read_from_its_own_root(site, lab, host, expected):
    """Over SSH, the archiver tells the lab's legacy hosts apart by their own files: release,
    init (sysvinit's own /sbin/init on old1), the network stack in use and its interface."""
    tree = SshTree.for_source(Source(kind="ssh", host=site.address(host)), lab)
    system = await read_host_system(tree)
    assert (system.family, system.release, system.init, system.network,
            system.interface) == expected


async def test_up_again_is_a_check_and_down_leaves_nothing(site, lab):
    """A second `up` finds the site up and returns at once; `down` stops every process it
    started or that runs in the hosts, unmounts, and removes the namespaces and the veth;
    a second `down` is a no-op."""
    again = await legacy.up(lab)
    assert "up (already)" in again.timings
    pids = {procs.recorded_pid(p) for p in (lab.lab_dir / "legacy/.state/run").glob("*.pid")}
    # sshd on each of the six hosts, nginx on app1 and old1, mariadbd on db1, db2, net1 and
    # plan1, postgres on db1, and the site's DNS (named)
    assert len(pids - {None}) == sum(len(h.daemons) for h in site.hosts.values()) + 1 == 14
    roots = [host.root for host in site.hosts.values()]
    await legacy.down(lab)
    assert not [ns for ns in net.namespaces() if ns.startswith("ferry-legacy")]
    assert not net.link_exists("ferry-legacy")
    assert not mounts.mounts_below(lab.lab_dir / "legacy")
    assert not procs.rooted_in(roots)
    assert not [pid for pid in pids - {None} if procs.alive(pid)]
    assert not OWNER_RECORD.exists()
    await legacy.down(lab)
