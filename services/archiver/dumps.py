"""Database dumps of a legacy host: the engine's dump program (shared/databases) piped into
zstd, through the same atomic, hashed pipeline as the path archives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

from dataclasses import replace

from services.archiver.archive import ArchiveResult, PipelineError, compress
from shared import proc
from shared.databases import DatabaseSource, DumpError, Unsupported, engine

__all__ = ["DumpError", "dump_database", "dump_globals", "probe_server", "run_dump"]

PROBE_TIMEOUT_S = 60


async def dump_database(db: DatabaseSource, dest: Path) -> ArchiveResult:
    """Dump `db` into `dest` as zstd-compressed SQL; `dest` is replaced atomically."""
    try:
        argv, env = engine(db.engine).dump_command(db)
    except Unsupported as exc:
        raise DumpError(f"dump of {db} failed: {exc}") from None
    return await run_dump(db, argv, dest, env=env)


async def probe_server(db: DatabaseSource, names: Sequence[str], *, tree=None) -> str:
    """The version of `db`'s server (an engine with globals: PostgreSQL), asked before
    anything is dumped; DumpError naming what the plan asks and the server lacks (a database,
    a version Ferryman rebuilds). `tree`: an SshTree to ask through, else here. Reads only."""
    server = engine(db.engine)
    where = f"{server.title} server of {db}"
    if tree is None:
        argv, env = server.probe_command(db, names)
        stdin = None
    else:
        script, stdin = server.probe_script(db, names)
        argv, env = tree.ssh_argv(script), None
    try:
        done = await proc.run(argv, timeout=PROBE_TIMEOUT_S, stdin=stdin, env=env, check=False,
                              what=f"asking the {where}")
    except proc.CommandTimedOut:
        raise DumpError(f"the {where} gave no answer in {PROBE_TIMEOUT_S} s") from None
    except OSError as exc:
        raise DumpError(f"cannot ask the {where}: {exc}") from None
    if done.returncode != 0:
        tail = done.stderr_tail()
        cause = (tree.explain_exit(done.returncode, tail, "psql") if tree is not None
                 else f"psql exited {done.returncode}: {tail}")
        raise DumpError(_scrub(f"cannot ask the {where}: {cause}", db.password))
    version, problem = server.probe_problem(done.stdout.decode(errors="replace"), names)
    if problem:
        raise DumpError(f"{where}: {problem}")
    return version


async def dump_globals(db: DatabaseSource, dest: Path, version: str | None = None, *,
                       tree=None) -> ArchiveResult:
    """The cluster's globals (roles, tablespaces) into `dest`, zstd-compressed, as an archive
    of kind database whose source is the engine's globals_source."""
    server = engine(db.engine)
    what = replace(db, name=server.globals_source)
    if tree is None:
        argv, env = server.globals_command(db)
        done = await run_dump(what, argv, dest, env=env)
    else:
        script, stdin = server.globals_script(db)
        done = await run_dump(what, tree.ssh_argv(script), dest, stdin=stdin,
                              explain=lambda error: tree.explain(error, what="pg_dumpall"),
                              no_data_timeout=tree.no_data_timeout_s)
    return replace(done, server_version=version)


async def run_dump(db: DatabaseSource, argv: Sequence[str], dest: Path, *,
                   env: Mapping[str, str] | None = None, stdin: bytes | None = None,
                   explain: Callable[[PipelineError], str] = str,
                   no_data_timeout: float | None = None) -> ArchiveResult:
    """`argv | zstd > dest`, failures worded by `explain` and scrubbed of the password."""
    try:
        done = await compress(argv, dest, env=env, stdin=stdin, no_data_timeout=no_data_timeout)
    except PipelineError as exc:
        raise DumpError(_scrub(f"dump of {db} failed{exc.after()}: {explain(exc)}",
                               db.password)) from None
    return ArchiveResult(file=dest, sha256=done.sha256, size=done.size, source_path=db.name,
                         kind="database", engine=db.engine)


def _scrub(message: str, password: str | None) -> str:
    """Defence in depth: no client is known to echo the password, but none may reach a log."""
    return message.replace(password, "***") if password else message
