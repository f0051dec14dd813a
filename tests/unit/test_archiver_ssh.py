"""The archiver's SSH side without a host: the ssh and remote tar/dump command lines, how the
password travels, how ssh's failures are worded; and the rules every root archive gets."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from services.archiver.archive import (
    ROOT_EXCLUDES, ROOT_FIRST, ArchiveError, PipelineError, archive_path, tar_create_argv,
)
from services.archiver.ssh import SshTree
from shared.databases import DatabaseSource, database_source, engine
from shared.plan import DatabaseSpec, Source
from shared.settings import Settings

HOSTILE = ["it's", 'say "hi"', "$(touch /tmp/pwned)", "`id`", "a;b", "sp ace/*", "new\nline"]


def tree(**changes) -> SshTree:
    values = dict(host="10.213.0.11", port=22, user="root", key_file=Path("/keys/id_ed25519"),
                  known_hosts=Path("/state/ssh/known_hosts"))
    values.update(changes)
    return SshTree(**values)


def remote_dump_script(db: DatabaseSource) -> tuple[str, bytes | None]:
    return engine(db.engine).remote_dump_script(db)


def remote_words(command: str) -> list[str]:
    """What a POSIX shell makes of the remote command line: its words, as the program gets
    them (printed NUL-separated by printf in place of the program)."""
    program, _, rest = command.partition(" ")
    done = subprocess.run(["sh", "-c", f"printf '%s\\0' {rest}"], capture_output=True,
                          check=True)
    return [program, *done.stdout.decode().split("\0")[:-1]]


def test_ssh_runs_in_batch_mode_with_only_the_given_key_and_known_hosts():
    """ssh never prompts, uses only the source's key, checks hosts against the archiver's own
    known_hosts (accepting new ones), times out, and takes the host after "--"."""
    argv = tree(port=2222, user="backup").ssh_argv("true")
    options = {argv[i + 1] for i, word in enumerate(argv) if word == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=accept-new", "ConnectTimeout=15",
            "ServerAliveInterval=15", "IdentitiesOnly=yes", "IdentityFile=/keys/id_ed25519",
            "UserKnownHostsFile=/state/ssh/known_hosts"} <= options
    assert argv[0] == "ssh" and "-T" in argv
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "backup"
    assert argv[-3:] == ["--", "10.213.0.11", "true"]


def test_a_host_that_looks_like_an_option_stays_a_host():
    """A plan's host "-oProxyCommand=..." cannot become an ssh option: it comes after "--"."""
    argv = tree(host="-oProxyCommand=touch /tmp/x").ssh_argv("true")
    assert argv.index("--") == len(argv) - 3


def test_paths_with_percent_or_blanks_reach_ssh_literally():
    """ssh expands %-tokens and splits on blanks in -o values: such key and known_hosts paths
    are escaped and quoted."""
    argv = tree(key_file=Path("/keys/my key%h"), known_hosts=Path("/st 100%/kh")).ssh_argv("x")
    assert 'IdentityFile="/keys/my key%%h"' in argv
    assert 'UserKnownHostsFile="/st 100%%/kh"' in argv


def test_the_source_decides_the_key_and_settings_the_rest(tmp_path: Path):
    """A source's key_file wins; without one, the archiver's identity; known_hosts is always
    the archiver's own."""
    settings = Settings(state_dir=tmp_path)
    default = SshTree.for_source(Source(kind="ssh", host="db1", port=2200), settings)
    assert (default.key_file, default.known_hosts, default.port, default.user) == (
        tmp_path / "ssh" / "id_ed25519", tmp_path / "ssh" / "known_hosts", 2200, "root")
    own = SshTree.for_source(Source(kind="ssh", host="db1", key_file="/k/legacy"), settings)
    assert own.key_file == Path("/k/legacy")


@pytest.mark.parametrize("path", ["/data", "/srv/it's here"])
def test_the_remote_tar_gets_exactly_the_local_argv(path: str):
    """Through the remote shell, tar receives word for word what tar_create_argv built, however
    hostile the excludes and the path (nothing in them is run)."""
    excludes = [f"tmp/{word}*" for word in HOSTILE]
    argv = tree(acls=False).tar_command(path, excludes)
    expected = tar_create_argv(path, excludes, acls=False, xattrs=True)
    assert remote_words(argv[-1]) == expected
    assert not Path("/tmp/pwned").exists()


def test_root_members_come_first_only_when_the_probe_found_them():
    """A probed host names only the account files it has, ahead of "."; an unprobed tree
    takes the names as given."""
    probed = tree(present=frozenset({"etc/passwd", "etc/group"}))
    words = shlex.split(probed.tar_command("/", [], ROOT_FIRST)[-1])
    assert words[-4:] == ["--", "./etc/passwd", "./etc/group", "."]
    words = shlex.split(tree().tar_command("/", [], ROOT_FIRST)[-1])
    assert words[-6:] == ["--", "./etc/passwd", "./etc/group", "./etc/shadow", "./etc/gshadow",
                          "."]


class Recorder:
    """A TreeSource that records what it is asked for and produces the given shell script's
    output (and exit status) in place of tar."""

    def __init__(self, script: str = "exit 0"):
        self.script = script
        self.calls: list[tuple[str, list[str], list[str]]] = []

    def tar_command(self, path, excludes, first=()):
        self.calls.append((path, list(excludes), list(first)))
        return ["sh", "-c", self.script]


async def test_a_root_archive_leaves_pseudo_filesystems_out_and_names_accounts_first(tmp_path):
    """For "/" (and only "/"), the pseudo filesystems' contents are excluded and the account
    files asked for first, on top of the plan's own excludes."""
    source = Recorder()
    await archive_path(source, "/", ["var/lib/mysql/*"], tmp_path / "root.tar.zst")
    await archive_path(source, "/data", ["tmp/*"], tmp_path / "data.tar.zst")
    assert source.calls == [("/", [*ROOT_EXCLUDES, "var/lib/mysql/*"], list(ROOT_FIRST)),
                            ("/data", ["tmp/*"], [])]
    assert set(ROOT_EXCLUDES) == {"proc/*", "sys/*", "dev/*", "run/*", "tmp/*"}


async def test_tar_status_1_is_a_recorded_warning_and_status_2_a_failure(tmp_path: Path):
    """GNU tar's "file changed as we read it" (exit 1) keeps the archive and records tar's
    words as a warning; exit 2 fails the archive and leaves no file."""
    changed = Recorder("printf data; echo 'tar: ./log: file changed as we read it' >&2; exit 1")
    result = await archive_path(changed, "/var", [], tmp_path / "var.tar.zst")
    assert result.file.exists() and len(result.warnings) == 1
    assert "file changed as we read it" in result.warnings[0]
    assert result.warnings[0].startswith("tar: files changed while it read them, archived as "
                                         "read (exit status 1): tar: ./log: file changed")
    fatal = Recorder("echo 'tar: /var: Cannot open: Permission denied' >&2; exit 2")
    with pytest.raises(ArchiveError, match="exited 2.*Permission denied"):
        await archive_path(fatal, "/var", [], tmp_path / "bad.tar.zst")
    assert not (tmp_path / "bad.tar.zst").exists()


def test_the_dump_password_travels_on_stdin_never_in_a_command_line():
    """The ssh argv and the remote script hold no password; it is stdin's first line."""
    password = 'pa ss"w$rd`x`'
    db = DatabaseSource("mariadb", "shop", "127.0.0.1", 3306, user="dumper", password=password,
                        socket=True)
    argv, stdin = tree().dump_command(db)
    assert not any(password in word for word in argv)
    assert stdin == password.encode() + b"\n"
    script, _ = remote_dump_script(db)
    assert password not in script


def test_the_remote_dump_script_hands_the_password_to_the_dump_only(tmp_path: Path):
    """Run by a POSIX shell with a stub mariadb-dump: the dump gets the password in MYSQL_PWD
    (read from stdin, byte for byte), the dump options as argv, and none of the MYSQL_* the
    login environment may carry."""
    stub = tmp_path / "mariadb-dump"
    stub.write_text('#!/bin/sh\nprintf "pwd=%s\\n" "$MYSQL_PWD"\nprintf "host=%s\\n" '
                    '"${MYSQL_HOST-unset}"\nprintf "%s\\n" "$@"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    password = "pa ss\"w$rd 'q' \\n"
    db = DatabaseSource("mariadb", "shop", "127.0.0.1", 3306, user="dumper", password=password,
                        socket=True)
    script, stdin = remote_dump_script(db)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "MYSQL_HOST": "elsewhere",
           "MYSQL_PWD": "inherited"}
    done = subprocess.run(["sh", "-c", script], input=stdin, capture_output=True, env=env,
                          check=True)
    lines = done.stdout.decode().splitlines()
    assert lines[0] == f"pwd={password}" and lines[1] == "host=unset"
    assert lines[2:] == engine("mariadb").dump_options(db)
    assert "--protocol=SOCKET" in lines


def test_without_a_dump_program_the_script_says_so(tmp_path: Path):
    """A host without mariadb-dump or mysqldump: exit 127 and a sentence, not a shell error."""
    script, _ = remote_dump_script(DatabaseSource("mariadb", "shop", "127.0.0.1", 3306))
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True,
                          env={"PATH": str(tmp_path)})  # an empty PATH but for the shell
    assert done.returncode == 127
    assert b"neither mariadb-dump nor mysqldump" in done.stderr


def test_a_postgresql_dump_script_sets_its_database_by_environment():
    """pg_dump gets the database as PGDATABASE (a name on its command line could be read as a
    connection string) and, by socket, no --host."""
    db = DatabaseSource("postgresql", "shop", "127.0.0.1", 5432, password="s3cret", socket=True)
    script, stdin = remote_dump_script(db)
    assert "PGDATABASE=shop; export PGDATABASE" in script
    assert "IFS= read -r PGPASSWORD" in script and stdin == b"s3cret\n"
    assert "--host" not in script and "--port=5432" in script


@pytest.mark.parametrize("spec, over_ssh, socket", [
    (DatabaseSpec(engine="mariadb", name="shop"), True, True),
    (DatabaseSpec(engine="mariadb", name="shop", host="localhost"), True, True),
    (DatabaseSpec(engine="mariadb", name="shop", port=3306), True, False),
    (DatabaseSpec(engine="mariadb", name="shop", host="10.0.0.5"), True, False),
    (DatabaseSpec(engine="mariadb", name="shop"), False, False),
])
def test_a_database_on_the_host_itself_is_dumped_by_socket(spec, over_ssh, socket):
    """Over SSH, the default host with no port means the server's local socket; a port or
    another host means TCP; a local source always uses TCP."""
    assert database_source(spec, over_ssh).socket is socket


@pytest.mark.parametrize("stderr, expected", [
    ("root@10.213.0.11: Permission denied (publickey).",
     "10.213.0.11 port 22 refused the SSH key /keys/id_ed25519 for user root"),
    ("ssh: connect to host 10.213.0.11 port 22: Connection timed out",
     "cannot reach 10.213.0.11 port 22 over SSH"),
    ("ssh: connect to host 10.213.0.11 port 22: No route to host",
     "cannot reach 10.213.0.11 port 22 over SSH"),
    ("ssh: Could not resolve hostname app1: Name or service not known",
     "cannot reach 10.213.0.11 port 22 over SSH"),
    ("@@@\nHost key for 10.213.0.11 has changed and you have requested strict checking.\n"
     "Host key verification failed.",
     "the SSH host key of 10.213.0.11 port 22 is not the one recorded in"
     " /state/ssh/known_hosts"),
    ("kex_exchange_identification: read: Connection reset by peer",
     "cannot reach 10.213.0.11 port 22 over SSH"),
    ("something new", "SSH to root@10.213.0.11 port 22 failed: something new"),
    ("Connection to 10.213.0.11 port 22 timed out\nConnection timed out during banner exchange",
     "10.213.0.11 port 22 accepted the connection but sent no SSH banner within 15 s"),
    ("Warning: Permanently added '10.213.0.11' (ED25519) to the list of known hosts.\n"
     "Timeout, server 10.213.0.11 not responding.",
     "10.213.0.11 port 22 stopped answering (3 SSH keepalives 15 s apart went unanswered): "
     "Timeout, server 10.213.0.11 not responding."),
])
def test_ssh_failures_are_worded_by_cause(stderr: str, expected: str):
    """ssh's own failures (exit 255) name the host, port and cause; a failure of the remote
    program names it and its status."""
    error = PipelineError("ssh exited 255", [("ssh", 255, stderr)])
    assert tree().explain(error).startswith(expected)
    remote = PipelineError("ssh exited 2", [("ssh", 2, "tar: /x: Cannot open")])
    assert tree().explain(remote) == "tar on 10.213.0.11 exited 2: tar: /x: Cannot open"
    first_contact = PipelineError("ssh exited 2", [("ssh", 2, (
        "Warning: Permanently added '10.213.0.11' (ED25519) to the list of known hosts.\n"
        "tar: /x: Cannot open"))])
    assert tree().explain(first_contact) == "tar on 10.213.0.11 exited 2: tar: /x: Cannot open"


def test_the_settings_bound_how_long_a_silent_host_is_waited_for(tmp_path: Path):
    """The connect timeout, the keepalives and the no-data bound come from the settings, and
    the archive stream's ssh logs at INFO (where it says a server stopped responding)."""
    settings = Settings(state_dir=tmp_path, ssh_connect_timeout_s=4, ssh_alive_interval_s=2,
                        ssh_alive_count_max=5, archive_no_data_timeout_s=30)
    source = SshTree.for_source(Source(kind="ssh", host="db1"), settings)
    argv = source.ssh_argv("true")
    options = {argv[i + 1] for i, word in enumerate(argv) if word == "-o"}
    assert {"ConnectTimeout=4", "ServerAliveInterval=2", "ServerAliveCountMax=5",
            "LogLevel=INFO"} <= options
    assert source.no_data_timeout_s == 30
    assert "LogLevel=ERROR" in tree().ssh_argv("true")  # other callers keep ssh quiet


async def test_a_stream_that_stops_is_given_up_after_the_no_data_bound(tmp_path: Path):
    """A producer that sends 2 MB and then nothing (still running) is killed once no byte has
    come for the bound: the error says so with what had arrived, and no file is left."""
    source = Recorder("head -c 2000000 /dev/urandom; exec sleep 60")
    source.no_data_timeout_s = 0.5
    dest = tmp_path / "data.tar.zst"
    with pytest.raises(ArchiveError) as failure:
        await archive_path(source, "/data", [], dest)
    message = str(failure.value)
    assert "failed after 2.0 MB received: no data from sh for 0.5 s" in message, message
    assert list(tmp_path.iterdir()) == []


async def test_a_slow_steady_stream_is_not_given_up(tmp_path: Path):
    """Bytes that keep coming, however slowly, keep the stream alive past the bound."""
    source = Recorder("for i in 1 2 3 4 5 6 7 8 9 10; do printf x; sleep 0.1; done")
    source.no_data_timeout_s = 0.5
    result = await archive_path(source, "/data", [], tmp_path / "slow.tar.zst")
    assert result.file.exists()


async def test_a_missing_key_fails_before_connecting(tmp_path: Path):
    """No key file: a clear error naming it, without running ssh."""
    with pytest.raises(ArchiveError, match="SSH key .*nokey for 10.213.0.11 does not exist"):
        await tree(key_file=tmp_path / "nokey").probe()


def test_no_secret_in_the_environment_of_this_test_leaks_into_a_remote_command():
    """The remote command is the same whatever this process's environment holds (the dump's
    variables are set by the script, not inherited through ssh)."""
    db = DatabaseSource("mariadb", "shop", "127.0.0.1", 3306, socket=True)
    before = remote_dump_script(db)
    os.environ["MYSQL_PWD"] = "from-the-archiver"
    try:
        assert remote_dump_script(db) == before
    finally:
        del os.environ["MYSQL_PWD"]
