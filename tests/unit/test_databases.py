"""The database-engine seam (shared/databases): each engine's command lines, scripts and SQL,
where a password may go (stdin and environment, never argv), what an engine refuses, and which
engine a VM's server is."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shared import databases
from shared.databases import DatabaseSource, Position, Unsupported, engine
from shared.plan import DatabaseSpec, load_plan_file
from tests.unit.test_plan import EXAMPLE

PASSWORD = 'pa ss"w$rd `x` \'q\''
ENGINES = sorted(databases.ENGINES)
# Debian 10's MariaDB: the oldest Ferryman speaks to, with the oldest statements.
MARIADB_10_3 = "10.3.39-MariaDB-0+deb10u1"


def source(name: str, **changes) -> DatabaseSource:
    values = dict(engine=name, name="shop", host="10.0.0.5",
                  port=engine(name).default_port, user="dumper", password=PASSWORD)
    values.update(changes)
    return DatabaseSource(**values)


def test_engines_are_looked_up_by_the_name_plans_use():
    """engine("mariadb") is MariaDB; a name no engine has is refused, naming it."""
    assert engine("mariadb").title == "MariaDB" and engine("mariadb").default_port == 3306
    assert engine("postgresql").title == "PostgreSQL"
    assert engine("postgresql").default_port == 5432
    with pytest.raises(Unsupported, match="unknown engine 'oracle'"):
        engine("oracle")


def test_a_plans_default_port_is_its_engines():
    """A database without a port in the plan gets its engine's default."""
    assert DatabaseSpec(engine="mariadb", name="x").effective_port == 3306
    assert DatabaseSpec(engine="postgresql", name="x").effective_port == 5432
    assert DatabaseSpec(engine="postgresql", name="x", port=6543).effective_port == 6543


@pytest.mark.parametrize("name", ENGINES)
def test_a_local_dump_has_the_password_in_its_environment_never_in_argv(name, monkeypatch):
    """The dump's argv holds no password; its environment has it in the engine's variable,
    and none of the client variables this process inherited."""
    server = engine(name)
    for variable in server.client_environment:
        monkeypatch.setenv(variable, "inherited")
    argv, env = server.dump_command(source(name))
    assert not any(PASSWORD in word for word in argv)
    assert env[server.password_variable] == PASSWORD
    assert not [v for v in server.client_environment if env.get(v) == "inherited"]
    assert "--" not in argv or argv[argv.index("--") + 1:] == ["shop"]


@pytest.mark.parametrize("name", ENGINES)
def test_a_remote_dump_reads_the_password_from_stdin(name):
    """The remote script holds no password (it may be logged); stdin's one line does."""
    script, stdin = engine(name).remote_dump_script(source(name))
    assert PASSWORD not in script
    assert stdin == PASSWORD.encode() + b"\n"
    assert f"IFS= read -r {engine(name).password_variable}" in script
    without, nothing = engine(name).remote_dump_script(source(name, password=None))
    assert nothing is None and "read -r" not in without


@pytest.mark.parametrize("name", ENGINES)
def test_a_password_that_cannot_be_one_line_is_refused(name):
    with pytest.raises(databases.DumpError, match="newline or NUL"):
        engine(name).remote_dump_script(source(name, password="two\nlines"))


@pytest.mark.parametrize("name", ENGINES)
def test_every_remote_dump_script_parses_under_sh(name):
    """The remote dump scripts are POSIX shell (the legacy host's login shell runs them)."""
    script, _ = engine(name).remote_dump_script(source(name))
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


def test_mariadb_dumps_over_tcp_or_the_local_socket():
    mariadb = engine("mariadb")
    tcp = mariadb.dump_options(source("mariadb", port=3307))
    assert tcp[:3] == ["--protocol=TCP", "--host=10.0.0.5", "--port=3307"]
    assert mariadb.dump_options(source("mariadb", socket=True))[0] == "--protocol=SOCKET"
    assert tcp[-2:] == ["--", "shop"] and "--single-transaction" in tcp


def test_postgresql_names_its_database_by_environment():
    """pg_dump takes the database from PGDATABASE (a name on its command line may be read as
    a connection string), and no --host for the local socket."""
    postgresql = engine("postgresql")
    assert postgresql.dump_variables(source("postgresql"), with_password=False) == {
        "PGDATABASE": "shop"}
    assert "--host" not in " ".join(postgresql.dump_options(source("postgresql", socket=True)))
    argv, env = postgresql.dump_command(source("postgresql"))
    assert argv[0] == "pg_dump" and "shop" not in argv and env["PGDATABASE"] == "shop"


def test_mariadb_command_lines_take_their_sql_on_stdin():
    """The client's command lines hold no SQL (SQL may hold a password)."""
    mariadb = engine("mariadb")
    # `mariadb` where there is one (10.4.6 on), else `mysql`.
    assert mariadb.client() == "$(command -v mariadb || echo mysql)"
    assert mariadb.client(batch=True) == "$(command -v mariadb || echo mysql) -N -B"
    assert mariadb.restore_command("shop") == (
        "$(command -v mariadb || echo mysql) --database=shop")
    assert engine("mysql").client(batch=True) == "mysql -N -B"
    assert engine("mysql").restore_command("it's") == "mysql '--database=it'\"'\"'s'"


def test_mariadb_read_only_and_promotion():
    mariadb = engine("mariadb").at_version(MARIADB_10_3)
    assert mariadb.read_only_sql(True) == "SET GLOBAL read_only = ON;"
    assert mariadb.read_only_sql(False) == "SET GLOBAL read_only = OFF;"
    promote = mariadb.promote_sql()
    assert promote.index("STOP SLAVE") < promote.index("RESET SLAVE ALL")
    assert promote.endswith("SET GLOBAL read_only = OFF;")


def test_mariadb_replication_statements_quote_what_they_are_given():
    """User, host, password and database names are SQL string literals, quotes escaped."""
    mariadb = engine("mariadb").at_version(MARIADB_10_3)
    user = mariadb.replication_user_sql("ferry", "it's", ["127.0.0.1", "localhost"])
    assert user.startswith("SET sql_log_bin = 0;")
    assert "CREATE OR REPLACE USER 'ferry'@'localhost' IDENTIFIED BY 'it\\'s';" in user
    assert "GRANT REPLICATION SLAVE ON *.* TO 'ferry'@'127.0.0.1';" in user
    point = mariadb.point_at_master_sql(host="127.0.0.1", port=3307, user="ferry",
                                        password="pw", databases=["shop", "crm"])
    assert "SET GLOBAL replicate_do_db = 'shop,crm';" in point
    assert ("CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = 3307, "
            "MASTER_USER = 'ferry', MASTER_PASSWORD = 'pw', MASTER_CONNECT_RETRY = 5;") in point
    dropped = mariadb.drop_replication_user_sql("ferry", ["127.0.0.1"])
    assert dropped == "SET sql_log_bin = 0;\nDROP USER IF EXISTS 'ferry'@'127.0.0.1';"


def test_mariadb_reads_its_positions_and_replica_status():
    mariadb = engine("mariadb").at_version(MARIADB_10_3)
    assert mariadb.parse_master_position("mysql-bin.000002\t4242\t\t\n") == Position(
        "mysql-bin.000002", 4242)
    assert mariadb.parse_master_position("") is None
    assert mariadb.wait_for_position_sql(Position("b.1", 7), 120) == (
        "SELECT MASTER_POS_WAIT('b.1', 7, 120);")
    assert mariadb.caught_up("3\n") and not mariadb.caught_up("-1") \
        and not mariadb.caught_up("NULL")
    status = mariadb.parse_replica_status(
        "*** 1. row ***\n  Slave_IO_Running: Yes\n  Slave_SQL_Running: No\n"
        "  Master_Port: 3307\n  Last_SQL_Error: Duplicate entry\n")
    assert (status.master_port, status.running, status.stopped_on_error) == (3307, False, True)
    assert (status.receiver, status.applier, status.applier_error) == (
        "Yes", "No", "Duplicate entry")
    assert mariadb.parse_replica_status("") == databases.ReplicaStatus()


def test_mariadb_says_why_a_server_cannot_be_a_master():
    mariadb = engine("mariadb")
    assert mariadb.master_check_sql() == "SELECT @@log_bin, @@server_id;"
    assert mariadb.master_problem("1\t7\n") is None
    assert "has no binary log" in mariadb.master_problem("0\t7\n")
    assert "server_id 0" in mariadb.master_problem("1\t0\n")


def test_the_dump_with_position_covers_every_database_and_hides_the_password():
    script, stdin = engine("mariadb").at_version(MARIADB_10_3).dump_with_position_script(
        source("mariadb", socket=True), ["shop", "crm"])
    assert "--master-data=1 --databases -- shop crm" in script
    assert PASSWORD not in script and stdin == PASSWORD.encode() + b"\n"


def test_the_rebuilt_mariadb_server_config():
    mariadb = engine("mariadb")
    assert mariadb.data_dir("/db/") == "/db/mysql"
    with pytest.raises(ValueError, match="cannot be written into my.cnf"):
        mariadb.data_dir('/db"x')
    config = mariadb.server_config(data_dir="/db/mysql", address="10.20.0.12", memory_mb=2048,
                                   replica=True)
    assert 'datadir                        = "/db/mysql"' in config
    assert "server_id                      = 169082892" in config
    assert "innodb_buffer_pool_size        = 512M" in config
    assert "log_slave_updates" not in config
    assert "log_slave_updates" in mariadb.server_config(
        data_dir="/db/mysql", address="10.20.0.12", memory_mb=2048, replica=False)


def test_statements_that_depend_on_the_version_need_it():
    """An engine not bound to its server's version refuses to guess its statements."""
    with pytest.raises(databases.VersionUnknown, match="bind the engine to it first"):
        engine("mysql").promote_sql()


def test_postgresql_is_cut_over_in_both_modes_but_never_as_a_binlog_replica():
    """PostgreSQL restores in the window and hands off (by logical replication: its own
    module), so what only the MySQL family's hand-off asks is refused in words."""
    postgresql = engine("postgresql")
    assert postgresql.rebuilds and postgresql.restores and postgresql.hands_off
    with pytest.raises(Unsupported, match="is not done for PostgreSQL databases yet"):
        postgresql.point_at_master_sql(host="h", port=5432, user="u", password="p",
                                       databases=["shop"])
    with pytest.raises(Unsupported, match="is not done for PostgreSQL databases yet"):
        postgresql.flavours()


def test_postgresql_runs_its_programs_as_the_clusters_user_when_root():
    """Over SSH as root the cutover's psql and pg_restore run as postgres (peer), from /; the
    window's restore ends the database's sessions and drops it before pg_restore --create."""
    postgresql = engine("postgresql")
    client = postgresql.client("stock", batch=True)
    assert "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -A -t " in client
    assert client.startswith("{ cd / && ")
    restore = postgresql.restore_command("it's")
    assert "pg_terminate_backend" in restore and "DROP DATABASE IF EXISTS" in restore
    assert restore.index("DROP DATABASE") < restore.index("pg_restore --exit-on-error")
    assert subprocess.run(["bash", "-n", "-c", f"{client} </dev/null; {restore}"]).returncode == 0


def test_postgresql_read_only_ends_the_sessions_that_began_before_it():
    on = engine("postgresql").read_only_sql(True)
    assert on.index("ALTER SYSTEM SET default_transaction_read_only = on") < \
        on.index("pg_reload_conf") < on.index("pg_terminate_backend")
    assert "backend_type = 'client backend'" in on  # replication's senders stay


def test_postgresql_dumps_in_custom_format_and_its_globals_once():
    """pg_dump -Fc of the database (owners kept: the globals bring the roles), and
    pg_dumpall --globals-only connecting to the postgres database."""
    postgresql = engine("postgresql")
    options = postgresql.dump_options(source("postgresql"))
    assert options[0] == "--format=custom" and "--no-owner" not in options
    argv, env = postgresql.globals_command(source("postgresql"))
    assert argv[:2] == ["pg_dumpall", "--globals-only"] and env["PGDATABASE"] == "postgres"
    assert env["PGPASSWORD"] == PASSWORD and not any(PASSWORD in word for word in argv)
    script, stdin = postgresql.globals_script(source("postgresql"))
    assert "PGDATABASE=postgres; export PGDATABASE" in script and PASSWORD not in script
    assert stdin == PASSWORD.encode() + b"\n"
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


def test_postgresql_by_socket_runs_as_the_postgres_user_when_root():
    """Through the local socket without a user (or as postgres), root becomes the postgres
    OS user (peer authentication, as the host's admin would); another user, or TCP, as is."""
    postgresql = engine("postgresql")
    script, _ = postgresql.remote_dump_script(source("postgresql", socket=True, user=None,
                                                     password=None))
    assert "exec runuser -u postgres -- pg_dump --format=custom" in script
    assert script.splitlines()[-1].startswith("exec pg_dump ")
    for other in (source("postgresql", socket=True), source("postgresql", user=None)):
        assert "runuser" not in postgresql.remote_dump_script(other)[0]


@pytest.mark.parametrize("answer, problem", [
    ("150004|", None),
    ("160002|crm", "the server has no database 'crm': the plan names it, the host has not"),
    ("150004|crm shop", "the server has no database 'shop', 'crm': the plan names them"),
    ("110022|", "PostgreSQL 11 is older than 12, the oldest Ferryman rebuilds"),
    ("psql: nothing", "not its version"),
])
def test_postgresql_is_asked_its_version_and_databases_before_it_is_dumped(answer, problem):
    postgresql = engine("postgresql")
    version, found = postgresql.probe_problem(answer, ["shop", "crm"])
    if problem is None:
        assert found is None and version == answer.split("|")[0]
    else:
        assert problem in found
    assert "ARRAY['shop', 'it''s']::text[]" in postgresql.probe_sql(["shop", "it's"])


def test_postgresql_statements_for_the_cutover():
    postgresql = engine("postgresql").at_version("150004")
    assert postgresql.version_sql() == "SHOW server_version_num;"
    assert "ALTER SYSTEM SET default_transaction_read_only = on;" in \
        postgresql.read_only_sql(True)
    assert postgresql.read_only_sql(False).startswith(
        "SET default_transaction_read_only = off;\nALTER SYSTEM RESET")
    assert postgresql.master_position_sql() == "SELECT pg_current_wal_lsn();"
    assert postgresql.parse_master_position("0/3000148\n") == Position("0/3000148",
                                                                       0x3000148)
    assert postgresql.parse_master_position("1/0") == Position("1/0", 1 << 32)
    assert postgresql.parse_master_position("") is None
    with pytest.raises(databases.UnsupportedVersion, match="older than 12"):
        postgresql.at_version("90624")


def test_the_rebuilt_postgresql_server_config():
    postgresql = engine("postgresql")
    assert postgresql.data_dir("/db/") == "/db/postgresql"
    with pytest.raises(ValueError, match="postgresql.conf"):
        postgresql.data_dir("/db\\x")
    config = postgresql.server_config(data_dir="/db/postgresql", address="10.20.0.12",
                                      memory_mb=2048, replica=False)
    for line in ("wal_level = logical", "listen_addresses = '*'", "shared_buffers = 512MB",
                 "password_encryption = 'scram-sha-256'", "max_replication_slots = 10"):
        assert line in config.splitlines()
    assert postgresql.hba_lines(["10.20.0.13"]) == [
        "host replication all 10.20.0.13/32 scram-sha-256"]
    assert postgresql.slot_name("db-2") == "ferry_db_2"


def test_the_engine_of_a_vm_is_its_databases_or_its_masters():
    plan = load_plan_file(EXAMPLE)
    assert databases.engine_of(plan.vm("db1")).name == "mariadb"
    assert databases.engine_of(plan.vm("db2"), plan).name == "mariadb"  # through db1
    assert databases.engine_of(plan.vm("app1")) is databases.DEFAULT
    postgres = plan.vm("db1").model_copy(update={"databases": [
        DatabaseSpec(engine="postgresql", name="pg")]})
    assert databases.engine_of(postgres) is engine("postgresql")
    assert databases.rebuild_engine(postgres) is engine("postgresql")
    assert databases.rebuild_engines(postgres) == [engine("postgresql")]
    both = postgres.model_copy(update={"databases": [
        DatabaseSpec(engine="mariadb", name="shop"), DatabaseSpec(engine="postgresql", name="pg"),
        DatabaseSpec(engine="mysql", name="other")]})
    assert databases.rebuild_engines(both) == [engine("mariadb"), engine("postgresql")]
    # The example's master holds MariaDB and PostgreSQL: its replica runs both servers.
    assert databases.rebuild_engines(plan.vm("db2"), plan) == [engine("mariadb"),
                                                               engine("postgresql")]
    assert databases.rebuild_engines(plan.vm("app1")) == [databases.DEFAULT]


def test_titles_list_engines_for_messages():
    assert databases.titles([engine("mariadb")]) == "MariaDB"
    assert databases.titles([engine("mariadb"), engine("postgresql")]) == (
        "MariaDB and PostgreSQL")
    assert databases.titles([]) == "none"


def test_services_never_compare_engine_names():
    """The seam's rule: no `== "mariadb"` or `!= "postgresql"` in services/ (plan values pass
    through as data)."""
    services = Path(__file__).resolve().parents[2] / "services"
    found = subprocess.run(
        ["grep", "-rnE", r"""[!=]=\s*["'](mariadb|mysql|postgresql)["']|"""
         r"""["'](mariadb|mysql|postgresql)["']\s*[!=]=""", str(services), "--include=*.py"],
        capture_output=True, text=True)
    assert found.stdout == ""
