"""Legacy hosts reached over SSH (`source: {kind: ssh}`): their paths are archived and their
databases dumped by programs that run *on the host*, the stream arriving on the local `ssh`
client's stdout and going straight into zstd.

Why OpenSSH's `ssh` client and not asyncssh (which design.md names), on purpose: an archive is
a process pipeline, `tar | zstd > file`, with no Python in the data path but the hashing of
zstd's output. Over SSH it stays one: `ssh host 'tar ...' | zstd > file`, run by the same code
as a local archive (`archive.compress`), with the same back-pressure, cancellation, atomic
publication and exit-status handling. asyncssh would put every byte of every archive through
Python objects and our own flow control. OpenSSH also brings what operators already rely on
(their ssh_config's ProxyJump and ciphers, the known_hosts format, `ssh-keygen -R`) and is on
every machine. The price is that failures come as exit status 255 and a line of text, which
`SshTree.explain` turns into "unreachable", "key refused" or "host key changed".

Secrets never go into argv (world-readable in `ps` on both machines): a database password is
written to ssh's stdin, read there by the remote shell's `read` builtin (no process, no argv)
into the dump program's environment, which only its own user and root can read.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from services.archiver.archive import (
    ROOT_FIRST, ArchiveError, ArchiveResult, PipelineError, relative_path, tar_create_argv,
)
from services.archiver.dumps import (
    CLEARED_ENV, PASSWORD_VARIABLE, PG_CONNECT_TIMEOUT_S, DatabaseSource, DumpError,
    dump_variables, mariadb_dump_options, postgresql_dump_options, run_dump,
)

SSH = "ssh"
CONNECT_TIMEOUT_S = 15
SERVER_ALIVE_INTERVAL_S = 15
PROBE_TIMEOUT_S = 90
# ssh's own failures (cannot connect, authentication, host key) exit 255; anything else is the
# remote command's exit status, passed through.
SSH_FAILED = 255
# Exit status of the remote dump script when no dump program is installed (the shell's own).
NOT_FOUND = 127

_UNREACHABLE = ("Connection timed out", "No route to host", "Connection refused",
                "Network is unreachable", "Could not resolve hostname",
                "Name or service not known", "Temporary failure in name resolution",
                "Connection closed by", "Connection reset by")
_KEY_REFUSED = ("Permission denied", "Too many authentication failures", "Load key")
_HOST_KEY = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
             "host key for", "No ED25519 host key is known")
_PRESENT = "ferry-present "


class SshError(ArchiveError):
    """SSH to a legacy host failed; the message names the host and the cause."""


@dataclass(frozen=True)
class SshTree:
    """A legacy host's tree, read with GNU tar over SSH (a `TreeSource`).

    `probe()` first: it proves the host answers and accepts the key, and learns what its tar
    can do and which of ROOT_FIRST it has. Without it, ACLs and xattrs are assumed and the
    `first` names are taken as present."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    acls: bool = True
    xattrs: bool = True
    present: frozenset[str] | None = field(default=None, compare=False)

    @classmethod
    def for_source(cls, source, settings) -> SshTree:
        """The tree of a plan's `source` (kind ssh) with the archiver's identity by default."""
        key = Path(source.key_file).expanduser() if source.key_file else settings.ssh_identity
        return cls(host=source.host, port=source.port, user=source.user, key_file=key,
                   known_hosts=settings.ssh_known_hosts)

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port} over SSH"

    # --- argv ---------------------------------------------------------------------------------

    def ssh_argv(self, remote_command: str) -> list[str]:
        """`ssh ... -- host 'remote_command'`; the remote login shell runs the command."""
        return [
            SSH,
            "-T",  # no terminal: a clean binary stream, and no escape character
            "-o", "BatchMode=yes",  # never prompt (for a password or a passphrase)
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={_config_path(self.known_hosts)}",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL_S}",
            # Only this key: not whatever an agent offers first (a wrong key would read as
            # "refused" after several tries, or lock the account on fail2ban'd hosts).
            "-o", "IdentitiesOnly=yes",
            "-o", f"IdentityFile={_config_path(self.key_file)}",
            # No "Permanently added ... to the list of known hosts" in the stderr we report.
            "-o", "LogLevel=ERROR",
            "-p", str(self.port), "-l", self.user,
            # "--": a host named "-oProxyCommand=..." is a host name, not an option.
            "--", self.host, remote_command,
        ]

    def tar_command(self, path: str, excludes: Sequence[str],
                    first: Sequence[str] = ()) -> list[str]:
        relative = relative_path(path)
        directory = "/" + relative
        present = [name for name in first if self.present is None
                   or _join(relative, name) in self.present]
        tar = tar_create_argv(directory, excludes, acls=self.acls, xattrs=self.xattrs,
                              first=present)
        return self.ssh_argv(shlex.join(tar))

    def dump_command(self, db: DatabaseSource) -> tuple[list[str], bytes | None]:
        """The ssh argv that dumps `db` on the host, and what to write to its stdin."""
        script, stdin = remote_dump_script(db)
        return self.ssh_argv(script), stdin

    # --- errors -------------------------------------------------------------------------------

    def explain(self, error: PipelineError, what: str = "tar") -> str:
        """An archive or dump pipeline's failure, worded for an operator."""
        for program, code, tail in error.failures:
            if program != SSH:
                continue
            if code == SSH_FAILED:
                return self.explain_ssh(tail)
            if code == NOT_FOUND:
                return f"{what} is not installed on {self.host}: {tail}"
            return f"{what} on {self.host} exited {code}" + (f": {tail}" if tail else "")
        return str(error)

    def explain_ssh(self, tail: str) -> str:
        """ssh's own failure (exit 255), by cause."""
        where = f"{self.host} port {self.port}"
        if any(mark in tail for mark in _HOST_KEY):
            # ssh's banner of @ lines says it at length; its last two lines say it enough.
            brief = " ".join(tail.splitlines()[-2:])
            return (f"the SSH host key of {where} is not the one recorded in {self.known_hosts}"
                    f" (a rebuilt host, or another machine at its address; if the change is"
                    f" expected: ssh-keygen -R {_known_hosts_name(self.host, self.port)} -f"
                    f" {self.known_hosts}): {brief}")
        if any(mark in tail for mark in _KEY_REFUSED):
            return f"{where} refused the SSH key {self.key_file} for user {self.user}: {tail}"
        if any(mark in tail for mark in _UNREACHABLE):
            return f"cannot reach {where} over SSH: {tail}"
        return f"SSH to {self.user}@{where} failed: {tail or 'no message'}"

    # --- the probe ----------------------------------------------------------------------------

    async def probe(self) -> SshTree:
        """Connect once: fail early with a clear cause, and learn the host's tar.

        Returns this tree with `acls`, `xattrs` and `present` from the host."""
        if not self.key_file.is_file():
            raise SshError(f"SSH key {self.key_file} for {self.host} does not exist")
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        checks = " ".join(shlex.quote(name) for name in ROOT_FIRST)
        script = ("LC_ALL=C tar --version; LC_ALL=C tar --help; "
                  f"for f in {checks}; do "
                  f"if [ -e \"/$f\" ] || [ -L \"/$f\" ]; then echo \"{_PRESENT}$f\"; fi; done")
        process = await asyncio.create_subprocess_exec(
            *self.ssh_argv(script), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(process.communicate(), PROBE_TIMEOUT_S)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            raise SshError(f"SSH to {self.host} port {self.port} gave no answer in "
                           f"{PROBE_TIMEOUT_S} s") from None
        text, tail = out.decode(errors="replace"), err.decode(errors="replace").strip()[-2000:]
        if process.returncode == SSH_FAILED:
            raise SshError(self.explain_ssh(tail))
        if "GNU tar" not in text:
            raise SshError(f"{self.host} has no GNU tar (the archiver needs its options): "
                           f"{tail or text.strip()[:200] or 'no output'}")
        present = frozenset(line[len(_PRESENT):].strip() for line in text.splitlines()
                            if line.startswith(_PRESENT))
        return replace(self, acls="--acls" in text, xattrs="--xattrs" in text, present=present)


def remote_dump_script(db: DatabaseSource, options: Sequence[str] | None = None,
                       ) -> tuple[str, bytes | None]:
    """A POSIX shell script dumping `db` to stdout, and the stdin it needs (the password).
    `options`: the dump program's arguments instead of the usual ones (MariaDB).

    The password travels on ssh's stdin: `read` is a shell builtin, so it never appears in any
    argv, on either machine; `export` hands it to the dump program's environment only. The
    script itself holds no secret, so it may be logged."""
    lines = [f"unset {' '.join(CLEARED_ENV[db.engine])}"]
    stdin = None
    if db.password is not None:
        if "\n" in db.password or "\0" in db.password:
            raise DumpError(f"dump of {db}: a password with a newline or NUL cannot be sent")
        variable = PASSWORD_VARIABLE[db.engine]
        # `|| [ -n ... ]`: a last line without its newline still counts.
        lines += [f"IFS= read -r {variable} || [ -n \"${variable}\" ] || "
                  f"{{ echo 'no password on stdin' >&2; exit 2; }}",
                  f"export {variable}"]
        stdin = db.password.encode() + b"\n"
    lines += [f"{name}={shlex.quote(value)}; export {name}"
              for name, value in dump_variables(db, with_password=False).items()]
    if db.engine == "mariadb":
        options = shlex.join(mariadb_dump_options(db) if options is None else options)
        # MariaDB's own name where it exists: newer clients warn on, or drop, the mysql* names.
        lines += ["for program in mariadb-dump mysqldump; do",
                  "  if command -v \"$program\" >/dev/null 2>&1; then",
                  f"    exec \"$program\" {options}",
                  "  fi",
                  "done",
                  "echo 'neither mariadb-dump nor mysqldump is installed' >&2",
                  f"exit {NOT_FOUND}"]
    else:
        lines += [f"PGCONNECT_TIMEOUT={PG_CONNECT_TIMEOUT_S}; export PGCONNECT_TIMEOUT",
                  f"exec pg_dump {shlex.join(postgresql_dump_options(db))}"]
    return "\n".join(lines), stdin


async def dump_database_over_ssh(tree: SshTree, db: DatabaseSource,
                                 dest: Path) -> ArchiveResult:
    """Dump `db` on the legacy host (the client there, connecting as the host sees the
    server) into `dest` here, as zstd-compressed SQL; `dest` is replaced atomically."""
    argv, stdin = tree.dump_command(db)
    program = "mariadb-dump" if db.engine == "mariadb" else "pg_dump"
    return await run_dump(db, argv, dest, stdin=stdin,
                          explain=lambda error: tree.explain(error, what=program))


def _join(relative: str, name: str) -> str:
    return f"{relative}/{name}" if relative else name


def _config_path(path: Path) -> str:
    """A path as an ssh -o value: ssh expands "%x" tokens and splits on blanks there."""
    text = os.fspath(path).replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"
