"""Legacy hosts reached over SSH (`source: {kind: ssh}`): their paths are archived and their
databases dumped by programs that run *on the host*, the stream arriving on the local `ssh`
client's stdout and going straight into zstd (shared/ssh.py says why OpenSSH's client).

Secrets never go into argv (world-readable in `ps` on both machines): a database password is
written to ssh's stdin, read there by the remote shell's `read` builtin (no process, no argv)
into the dump program's environment, which only its own user and root can read.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from services.archiver.archive import (
    ROOT_FIRST, ArchiveError, ArchiveResult, PipelineError, StreamStalled, relative_path,
    tar_create_argv,
)
from services.archiver.dumps import run_dump
from shared import proc
from shared.databases import DatabaseSource, DumpError, Unsupported, engine
from shared.ssh import SSH, SSH_FAILED, SshHost, plan_known_hosts, without_notices

PROBE_TIMEOUT_S = 90
# Exit status of a remote command that is not installed (the shell's own).
NOT_FOUND = 127
_PRESENT = "ferry-present "


class SshError(ArchiveError):
    """SSH to a legacy host failed; the message names the host and the cause."""


@dataclass(frozen=True)
class SshTree(SshHost):
    """A legacy host's tree, read with GNU tar over SSH (a `TreeSource`).

    `probe()` first: it proves the host answers and accepts the key, and learns what its tar
    can do and which of ROOT_FIRST it has. Without it, ACLs and xattrs are assumed and the
    `first` names are taken as present."""

    acls: bool = True
    xattrs: bool = True
    present: frozenset[str] | None = field(default=None, compare=False)
    # The connection alive (keepalives answered) but no byte of the stream for this long: the
    # host's tar or dump is stuck, and is given up (TreeSource).
    no_data_timeout_s: float | None = None

    @classmethod
    def for_source(cls, source, settings) -> SshTree:
        """The tree of a plan's `source` (kind ssh) with the archiver's identity by default."""
        key = Path(source.key_file).expanduser() if source.key_file else settings.ssh_identity
        # The host's keys from the plan, if it gives them: only those (strict). Else its key
        # as recorded at its first archive (accept-new).
        known_hosts = settings.ssh_known_hosts
        if source.host_keys:
            known_hosts = plan_known_hosts(known_hosts, source.host, source.port,
                                           source.host_keys)
        return cls(host=source.host, port=source.port, user=source.user, key_file=key,
                   known_hosts=known_hosts, strict=bool(source.host_keys),
                   connect_timeout_s=settings.ssh_connect_timeout_s,
                   alive_interval_s=settings.ssh_alive_interval_s,
                   alive_count_max=settings.ssh_alive_count_max,
                   no_data_timeout_s=settings.archive_no_data_timeout_s,
                   # A host gone mid-archive: ssh says so only at INFO (shared/ssh.py).
                   log_level="INFO")

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port} over SSH"

    # --- argv ---------------------------------------------------------------------------------

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
        script, stdin = engine(db.engine).remote_dump_script(db)
        return self.ssh_argv(script), stdin

    # --- errors -------------------------------------------------------------------------------

    def explain(self, error: PipelineError, what: str = "tar") -> str:
        """An archive or dump pipeline's failure, worded for an operator."""
        if isinstance(error, StreamStalled):
            return (f"no data from {self.host} for {error.seconds:g} s while its {what} ran: "
                    f"the connection is alive but the stream stopped (a hung mount or lock on "
                    f"the host?)")
        for program, code, tail in error.failures:
            if program != SSH:
                continue
            return self.explain_exit(code, tail, what)
        return str(error)

    def explain_exit(self, code: int, tail: str, what: str) -> str:
        """A remote program's exit status `code` (ssh's own, 255, included), worded."""
        tail = without_notices(tail)
        if code == SSH_FAILED:
            return self.explain_ssh(tail)
        if code == NOT_FOUND:
            return f"{what} is not installed on {self.host}: {tail}"
        return f"{what} on {self.host} exited {code}" + (f": {tail}" if tail else "")

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
        try:
            done = await proc.run(self.ssh_argv(script), timeout=PROBE_TIMEOUT_S, check=False)
        except proc.CommandTimedOut:
            raise SshError(f"SSH to {self.host} port {self.port} gave no answer in "
                           f"{PROBE_TIMEOUT_S} s") from None
        text = done.stdout.decode(errors="replace")
        tail = without_notices(proc.tail(done.stderr, 2000))
        if done.returncode == SSH_FAILED:
            raise SshError(self.explain_ssh(tail))
        if "GNU tar" not in text:
            raise SshError(f"{self.host} has no GNU tar (the archiver needs its options): "
                           f"{tail or text.strip()[:200] or 'no output'}")
        present = frozenset(line[len(_PRESENT):].strip() for line in text.splitlines()
                            if line.startswith(_PRESENT))
        return replace(self, acls="--acls" in text, xattrs="--xattrs" in text, present=present)


async def dump_database_over_ssh(tree: SshTree, db: DatabaseSource,
                                 dest: Path) -> ArchiveResult:
    """Dump `db` on the legacy host (the client there, connecting as the host sees the
    server) into `dest` here, as zstd-compressed SQL; `dest` is replaced atomically."""
    try:
        server = engine(db.engine)
        argv, stdin = tree.dump_command(db)
    except Unsupported as exc:
        raise DumpError(f"dump of {db} failed: {exc}") from None
    return await run_dump(db, argv, dest, stdin=stdin,
                          explain=lambda error: tree.explain(error, what=server.dump_program),
                          no_data_timeout=tree.no_data_timeout_s)


def _join(relative: str, name: str) -> str:
    return f"{relative}/{name}" if relative else name
