"""The archiver's engine with the real programs: tar, zstd, mysqldump/mariadb-dump, pg_dump,
against this machine's MariaDB and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from services.archiver.archive import (
    ArchiveError, ArchiveResult, LocalTree, archive_path, compress_to_file,
)
from services.archiver.dumps import dump_database
from services.archiver.manifest import MANIFEST, verify_manifest, write_manifest
from shared.databases import DatabaseSource, DumpError, engine
from tests.conftest import eventually, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LEGACY = REPO / "examples" / "legacy"
MARIADB = ["mysql", "--protocol=TCP", "-h127.0.0.1", "-P3306", "-uroot", "-B", "-N",
           "--default-character-set=utf8mb4"]
PSQL = ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres",
        "-v", "ON_ERROR_STOP=1", "-A", "-t"]


# --- helpers ----------------------------------------------------------------------------------

def unpack(archive: Path, target: Path) -> None:
    """What the new VM does: zstd -dc archive | tar -x -C /newroot/<path>."""
    target.mkdir(parents=True, exist_ok=True)
    zstd = subprocess.Popen(["zstd", "-dc", str(archive)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "--file=-", f"--directory={target}", "--numeric-owner",
                    "--same-owner", "--same-permissions", "--xattrs", "--xattrs-include=*",
                    "--acls"], stdin=zstd.stdout, check=True)
    zstd.stdout.close()
    assert zstd.wait() == 0


def members(archive: Path) -> set[str]:
    listing = subprocess.run(f"zstd -dc '{archive}' | tar -t", shell=True, check=True,
                             capture_output=True, text=True).stdout
    return set(listing.splitlines())


def snapshot(root: Path) -> dict[str, tuple]:
    """Per entry: kind, content hash or link target, mode, owner, mtime and user xattrs."""
    entries = {".": _entry(root)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            entries[path.relative_to(root).as_posix()] = _entry(path)
    return entries


def _entry(path: Path) -> tuple:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path), st.st_uid, st.st_gid)
    xattrs = tuple(sorted((k, os.getxattr(path, k)) for k in os.listxattr(path)))
    content = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
    mtime = st.st_mtime_ns if stat.S_ISREG(st.st_mode) else None
    return (stat.S_IFMT(st.st_mode), content, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            mtime, xattrs)


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def mariadb(sql: str, database: str | None = None, stdin: bytes | None = None) -> str:
    argv = [*MARIADB, *([database] if database else [])]
    if stdin is None:
        argv += ["-e", sql]
    done = subprocess.run(argv, input=stdin, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def psql(sql: str, database: str = "postgres", stdin: bytes | None = None) -> str:
    argv = [*PSQL, "-d", database, *(["-c", sql] if stdin is None else [])]
    done = subprocess.run(argv, input=stdin, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A legacy host's "/" with what a tree can hold: modes, owners, a symlink, an empty dir,
    a sparse file, a user xattr."""
    root = tmp_path / "host"
    app = root / "srv" / "app"
    (app / "bin").mkdir(parents=True)
    (app / "conf").mkdir()
    (app / "empty").mkdir()
    (app / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    (app / "bin" / "run").chmod(0o755)
    (app / "conf" / "secret.conf").write_text("token = not-a-real-one\n")
    (app / "conf" / "secret.conf").chmod(0o600)
    os.chown(app / "conf" / "secret.conf", 1234, 5678)
    (app / "conf").chmod(0o750)
    (app / "current").symlink_to("conf/secret.conf")
    with (app / "sparse.img").open("wb") as handle:
        handle.seek(4 << 20)
        handle.write(b"end")
    os.setxattr(app / "bin" / "run", "user.origin", b"legacy")
    app.chmod(0o711)
    return root


# --- path archives ----------------------------------------------------------------------------

async def test_an_archive_unpacks_to_an_identical_tree(host: Path, tmp_path: Path):
    """A tree archived and unpacked with `zstd -dc | tar -x` has the same entries, contents,
    modes, owners, mtimes, symlinks and user xattrs, including the archived folder's own mode."""
    result = await archive_path(LocalTree(host), "/srv/app", [], tmp_path / "out" / "app.tar.zst")
    unpack(result.file, tmp_path / "new")
    assert snapshot(tmp_path / "new") == snapshot(host / "srv" / "app")
    assert "./bin/run" in members(result.file)  # relative to the path: `tar -x -C /newroot/srv/app`


async def test_the_example_host_root_archives_relative_to_itself(tmp_path: Path):
    """Archiving "/" of the example app1 host unpacks to the same tree as examples/legacy/app1."""
    result = await archive_path(LocalTree(LEGACY / "app1"), "/", [], tmp_path / "app1.tar.zst")
    unpack(result.file, tmp_path / "new")
    assert snapshot(tmp_path / "new") == snapshot(LEGACY / "app1")
    assert "./var/www/shop/index.html" in members(result.file)


async def test_excludes_drop_their_contents_and_keep_the_rest(tmp_path: Path):
    """The example's `shared/tmp/*` and `sessions/*` excludes drop those files (keeping the
    empty directories) and nothing else."""
    result = await archive_path(LocalTree(LEGACY / "app1"), "/data",
                                ["shared/tmp/*", "sessions/*"], tmp_path / "data.tar.zst")
    names = members(result.file)
    assert {"./shared/images/mug.txt", "./tmp/x", "./shared/tmp/", "./sessions/"} <= names
    assert "./shared/tmp/cache.txt" not in names
    assert "./sessions/sess_1" not in names


async def test_an_exclude_is_anchored_at_the_archived_path(tmp_path: Path):
    """`tmp/*` excludes the archived path's own tmp/ but not a same-named tmp/ deeper down, and
    a leading or trailing "/" in a pattern changes nothing."""
    tree = LocalTree(LEGACY / "app1")
    result = await archive_path(tree, "/data", ["tmp/*"], tmp_path / "a.tar.zst")
    names = members(result.file)
    assert "./tmp/x" not in names and "./tmp/" in names
    assert "./shared/tmp/cache.txt" in names
    result = await archive_path(tree, "/data", ["/sessions/"], tmp_path / "b.tar.zst")
    names = members(result.file)
    assert not any(n.startswith("./sessions") for n in names)
    assert "./tmp/x" in names


async def test_recorded_sha256_and_size_are_the_files(host: Path, tmp_path: Path):
    """The result's sha256 and size are those of the written file, which zstd accepts, and no
    partial file is left beside it."""
    dest = tmp_path / "out" / "app.tar.zst"
    result = await archive_path(LocalTree(host), "/srv/app", [], dest)
    assert result == ArchiveResult(file=dest, sha256=file_sha256(dest), size=dest.stat().st_size,
                                   source_path="/srv/app", kind="path")
    subprocess.run(["zstd", "-tq", str(dest)], check=True)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["app.tar.zst"]


async def test_archiving_again_replaces_the_archive_with_an_equal_one(host: Path,
                                                                       tmp_path: Path):
    """A redone archive replaces the first with one that unpacks the same; for a tree without
    sparse files (tar names those by its PID) even the bytes, so the sha256 is stable."""
    dest = tmp_path / "app.tar.zst"
    await archive_path(LocalTree(host), "/srv/app", [], dest)
    unpack(dest, tmp_path / "first")
    os.utime(dest, (0, 0))  # so a replaced file is told from a kept one
    await archive_path(LocalTree(host), "/srv/app", [], dest)
    assert dest.stat().st_mtime != 0
    unpack(dest, tmp_path / "second")
    assert snapshot(tmp_path / "second") == snapshot(tmp_path / "first")
    example = LocalTree(LEGACY / "app1")
    first = await archive_path(example, "/", [], tmp_path / "app1.tar.zst")
    second = await archive_path(example, "/", [], tmp_path / "app1.tar.zst")
    assert second.sha256 == first.sha256


async def test_a_missing_source_path_fails_naming_it_and_leaves_nothing(tmp_path: Path):
    """A path that is not on the host raises ArchiveError naming the path and quoting tar,
    and neither the archive nor its partial file is left."""
    dest = tmp_path / "out" / "gone.tar.zst"
    with pytest.raises(ArchiveError) as caught:
        await archive_path(LocalTree(LEGACY / "app1"), "/srv/nothing-here", [], dest)
    assert "/srv/nothing-here" in str(caught.value)
    assert "No such file or directory" in str(caught.value)
    assert list(dest.parent.iterdir()) == []


async def test_a_path_leaving_the_tree_is_refused(tmp_path: Path):
    """A path with ".." is refused before anything runs: it could read outside the host's root."""
    with pytest.raises(ArchiveError, match=r"\.\."):
        await archive_path(LocalTree(LEGACY / "app1"), "/data/../../db1", [],
                           tmp_path / "x.tar.zst")


async def test_an_archive_inside_the_archived_tree_leaves_itself_out(host: Path):
    """Archiving a tree that holds the archive folder does not read the archive being written."""
    dest = host / "var" / "lib" / "ferry" / "archives" / "root.tar.zst"
    dest.parent.mkdir(parents=True)
    (dest.parent / "earlier.tar.zst").write_bytes(b"an earlier archive")
    result = await archive_path(LocalTree(host), "/", [], dest)
    names = members(result.file)
    assert "./srv/app/bin/run" in names and "./var/lib/ferry/" in names
    assert not any(n.startswith("./var/lib/ferry/archives") for n in names)


def member_order(archive: Path) -> list[str]:
    listing = subprocess.run(f"zstd -dc '{archive}' | tar -t", shell=True, check=True,
                             capture_output=True, text=True).stdout
    return listing.splitlines()


async def test_a_root_archive_starts_with_the_accounts_and_skips_pseudo_filesystems(
        host: Path, tmp_path: Path):
    """A local "/" archive leads with etc/passwd, etc/group and etc/shadow (those present;
    no gshadow here), keeps proc, sys, dev, run and tmp as empty directories, and unpacks to
    the same tree otherwise."""
    (host / "etc").mkdir()
    for name in ("passwd", "group", "shadow"):
        (host / "etc" / name).write_text(f"root:x:0:0 ({name})\n")
    for pseudo in ("proc/1", "sys/kernel", "dev/pts", "run/lock", "tmp/.X11-unix"):
        (host / pseudo).mkdir(parents=True)
        (host / pseudo / "junk").write_text("live state\n")
    result = await archive_path(LocalTree(host), "/", [], tmp_path / "root.tar.zst")
    names = member_order(result.file)
    assert names[:4] == ["./etc/passwd", "./etc/group", "./etc/shadow", "./"]
    for pseudo in ("proc", "sys", "dev", "run", "tmp"):
        assert f"./{pseudo}/" in names
        assert not any(n.startswith(f"./{pseudo}/") and n != f"./{pseudo}/" for n in names)
    unpack(result.file, tmp_path / "new")  # the repeated account files unpack cleanly
    assert (tmp_path / "new" / "etc" / "passwd").read_text() == "root:x:0:0 (passwd)\n"
    assert "./srv/app/bin/run" in names and result.warnings == ()


async def test_a_file_growing_while_tar_reads_it_is_a_warning_not_a_failure(tmp_path: Path):
    """Real GNU tar on a file appended to while it is read exits 1 ("file changed as we read
    it"): the archive is kept and the result carries tar's words as a warning."""
    live = tmp_path / "live"
    live.mkdir()
    (live / "big.log").write_bytes(os.urandom(32 << 20))  # read for long enough to see it grow
    writer = subprocess.Popen(["sh", "-c", f"while :; do echo line >> '{live}/big.log'; done"])
    try:
        result = await archive_path(LocalTree(live), "/", [], tmp_path / "live.tar.zst")
    finally:
        writer.kill()
        writer.wait()
    assert len(result.warnings) == 1, result.warnings
    assert "file changed as we read it" in result.warnings[0]
    assert "./big.log" in members(result.file)
    assert result.sha256 == file_sha256(result.file)


async def test_a_cancelled_archive_stops_its_programs_and_removes_the_partial(tmp_path: Path):
    """Cancelling the pipeline mid-stream (a service shutting down) removes the partial file."""
    dest = tmp_path / "never.zst"

    def partial_growing() -> bool:
        return any(p.stat().st_size > 0 for p in tmp_path.glob("never.zst.partial-*"))

    # A producer that writes forever: the pipeline is certainly mid-stream when cancelled.
    task = asyncio.create_task(compress_to_file(["yes"], dest))
    await eventually(partial_growing, what="the partial file to grow")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(tmp_path.iterdir()) == []



# --- database dumps ---------------------------------------------------------------------------

@pytest.fixture
def mariadb_db():
    """A database seeded with examples/legacy/shop.sql plus what plain rows do not test:
    4-byte UTF-8, binary data, a trigger, a routine and an event. Dropped afterwards."""
    name = unique("ferry_t")
    mariadb(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    try:
        mariadb("", name, stdin=(LEGACY / "shop.sql").read_bytes())
        mariadb(
            "CREATE TABLE blobs (id INT PRIMARY KEY, label VARCHAR(20), data BLOB)"
            " DEFAULT CHARSET=utf8mb4;"
            " INSERT INTO blobs VALUES (1, 'mug \U0001F375', UNHEX('00FF0D0A5C27')),"
            " (2, 'empty', '');"
            " CREATE TRIGGER orders_bi BEFORE INSERT ON orders FOR EACH ROW"
            " SET NEW.customer = TRIM(NEW.customer);"
            " CREATE PROCEDURE order_count() SELECT COUNT(*) FROM orders;"
            " CREATE EVENT purge_nothing ON SCHEDULE EVERY 1 DAY DISABLE"
            " DO DELETE FROM orders WHERE 1 = 0;", name)
        yield name
    finally:
        mariadb(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def fresh_mariadb_db():
    name = unique("ferry_t")
    mariadb(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    yield name
    mariadb(f"DROP DATABASE IF EXISTS {name}")


def mariadb_contents(name: str) -> dict[str, str]:
    return {
        "products": mariadb("SELECT * FROM products ORDER BY id", name),
        "orders": mariadb("SELECT * FROM orders ORDER BY id", name),
        "blobs": mariadb("SELECT id, label, HEX(data) FROM blobs ORDER BY id", name),
        "objects": mariadb(
            "SELECT 'trigger', TRIGGER_NAME FROM information_schema.TRIGGERS"
            f" WHERE TRIGGER_SCHEMA = '{name}' UNION ALL"
            " SELECT 'routine', ROUTINE_NAME FROM information_schema.ROUTINES"
            f" WHERE ROUTINE_SCHEMA = '{name}' UNION ALL"
            " SELECT 'event', EVENT_NAME FROM information_schema.EVENTS"
            f" WHERE EVENT_SCHEMA = '{name}' ORDER BY 1, 2"),
    }


async def test_a_mariadb_dump_loads_into_another_database_with_the_same_rows(
        mariadb_db: str, fresh_mariadb_db: str, tmp_path: Path):
    """A MariaDB dump, loaded the new VM's way into a differently named database, gives the
    same rows (binary and 4-byte UTF-8 intact), triggers, routines and events."""
    dest = tmp_path / "shop.sql.zst"
    result = await dump_database(
        DatabaseSource("mariadb", mariadb_db, "127.0.0.1", 3306, "root", None), dest)
    assert (result.kind, result.engine, result.source_path) == ("database", "mariadb", mariadb_db)
    assert (result.sha256, result.size) == (file_sha256(dest), dest.stat().st_size)
    sql = subprocess.run(["zstd", "-dc", str(dest)], capture_output=True, check=True).stdout
    assert b"CREATE DATABASE" not in sql and b"\nUSE " not in sql
    mariadb("", fresh_mariadb_db, stdin=b"SET sql_log_bin=0;\n" + sql)
    assert mariadb_contents(fresh_mariadb_db) == mariadb_contents(mariadb_db)
    assert "Zo\u00eb" in mariadb_contents(fresh_mariadb_db)["orders"]


async def test_a_mariadb_password_reaches_the_client_by_environment_only(mariadb_db: str,
                                                                         tmp_path: Path):
    """A user with a password dumps (the password reaches mysqldump through MYSQL_PWD) and
    the password is nowhere in the command line."""
    user, password = unique("ferry_u"), "Pw-" + uuid.uuid4().hex
    mariadb(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}';"
            f" GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON {mariadb_db}.* TO '{user}'@'127.0.0.1';"
            # Needed for --routines: MariaDB reads routine bodies from mysql.proc.
            f" GRANT SELECT ON mysql.proc TO '{user}'@'127.0.0.1'")
    try:
        db = DatabaseSource("mariadb", mariadb_db, "127.0.0.1", 3306, user, password)
        argv, env = engine("mariadb").dump_command(db)
        assert not any(password in arg for arg in argv) and env["MYSQL_PWD"] == password
        assert password not in repr(db)
        result = await dump_database(db, tmp_path / "d.sql.zst")
        sql = subprocess.run(["zstd", "-dc", str(result.file)], capture_output=True,
                             check=True).stdout
        assert b"INSERT INTO `products`" in sql
    finally:
        mariadb(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")


@pytest.fixture
def postgres_dbs():
    """Two uniquely named PostgreSQL databases, dropped afterwards."""
    names = [unique("ferry_t"), unique("ferry_t")]
    for name in names:
        psql(f"CREATE DATABASE {name}")
    yield names
    for name in names:
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_contents(name: str) -> str:
    return psql("SELECT id, name, encode(data, 'hex'), tags FROM items ORDER BY id", name)


async def test_a_postgresql_dump_loads_into_another_database_with_the_same_rows(
        postgres_dbs: list[str], tmp_path: Path):
    """A PostgreSQL dump (pg_dump's custom format, zstd over it) restored with pg_restore into
    another database gives the same rows and views."""
    source, target = postgres_dbs
    psql("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, data bytea, tags text[]);"
         " INSERT INTO items VALUES (1, 'Red mug \U0001F375', '\\x00ff0d0a', '{a,b}'),"
         " (2, 'Zoë''s teapot', NULL, '{}');"
         " CREATE VIEW item_names AS SELECT name FROM items;", source)
    dest = tmp_path / "pg.dump.zst"
    result = await dump_database(
        DatabaseSource("postgresql", source, "127.0.0.1", 5432, "postgres", None), dest)
    assert (result.kind, result.engine, result.source_path) == ("database", "postgresql", source)
    assert (result.sha256, result.size) == (file_sha256(dest), dest.stat().st_size)
    dump = subprocess.run(["zstd", "-dc", str(dest)], capture_output=True, check=True).stdout
    assert dump[:5] == b"PGDMP"
    done = subprocess.run(["pg_restore", "--exit-on-error", "-h", "127.0.0.1", "-p", "5432",
                           "-U", "postgres", "-d", target], input=dump, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert postgres_contents(target) == postgres_contents(source)
    assert psql("SELECT count(*) FROM item_names", target).strip() == "2"


@pytest.mark.parametrize("engine, port, user", [
    ("mariadb", 3306, "root"),                # wrong password
    ("mariadb", None, "root"),                # nothing listening
    ("postgresql", None, "postgres"),         # nothing listening
    ("postgresql", 5432, "no_such_role"),     # refused by the server
])
async def test_a_failed_dump_names_the_database_but_never_the_password(
        engine: str, port: int | None, user: str, tmp_path: Path):
    """A dump that cannot connect raises DumpError naming database, engine and host, quoting
    the client's error, without the password, and leaves no file behind."""
    password = "Sekr1t-" + uuid.uuid4().hex
    db = DatabaseSource(engine, "ferry_nowhere", "127.0.0.1", port or free_port(), user,
                        password)
    with pytest.raises(DumpError) as caught:
        await dump_database(db, tmp_path / "x.sql.zst")
    message = str(caught.value)
    assert password not in message and password not in repr(caught.value)
    for expected in ("ferry_nowhere", engine, "127.0.0.1", "exited"):
        assert expected in message
    assert list(tmp_path.iterdir()) == []


# --- manifest ---------------------------------------------------------------------------------

async def _two_archives(folder: Path) -> list[ArchiveResult]:
    tree = LocalTree(LEGACY / "app1")
    return [await archive_path(tree, "/etc", [], folder / "etc.tar.zst"),
            await archive_path(tree, "/var/www", [], folder / "www.tar.zst")]


async def test_the_manifest_verifies_with_sha256sum_and_with_ferryman(tmp_path: Path):
    """MANIFEST.sha256 passes `sha256sum -c` and verify_manifest finds no problem."""
    results = await _two_archives(tmp_path)
    path = write_manifest(results, tmp_path)
    assert path == tmp_path / MANIFEST
    subprocess.run(["sha256sum", "--quiet", "-c", MANIFEST], cwd=tmp_path, check=True)
    assert verify_manifest(tmp_path) == []


async def test_the_manifest_finds_a_flipped_byte_and_a_missing_file(tmp_path: Path):
    """One flipped byte in an archive is reported as a mismatch of that file, a deleted
    archive as missing, and a folder without manifest says so."""
    results = await _two_archives(tmp_path)
    write_manifest(results, tmp_path)
    data = bytearray(results[0].file.read_bytes())
    data[len(data) // 2] ^= 0x01
    results[0].file.write_bytes(bytes(data))
    results[1].file.unlink()
    problems = verify_manifest(tmp_path)
    assert len(problems) == 2
    assert problems[0].startswith("etc.tar.zst: sha256 mismatch")
    assert problems[1] == "www.tar.zst: missing"
    assert subprocess.run(["sha256sum", "--quiet", "-c", MANIFEST], cwd=tmp_path,
                          capture_output=True).returncode != 0
    assert verify_manifest(tmp_path / "elsewhere") == [f"{MANIFEST} is missing in "
                                                       f"{tmp_path / 'elsewhere'}"]
