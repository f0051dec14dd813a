"""Database dumps of a legacy host: the engine's dump program (shared/databases) piped into
zstd, through the same atomic, hashed pipeline as the path archives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

from services.archiver.archive import ArchiveResult, PipelineError, compress
from shared.databases import DatabaseSource, DumpError, Unsupported, engine

__all__ = ["DumpError", "dump_database", "run_dump"]


async def dump_database(db: DatabaseSource, dest: Path) -> ArchiveResult:
    """Dump `db` into `dest` as zstd-compressed SQL; `dest` is replaced atomically."""
    try:
        argv, env = engine(db.engine).dump_command(db)
    except Unsupported as exc:
        raise DumpError(f"dump of {db} failed: {exc}") from None
    return await run_dump(db, argv, dest, env=env)


async def run_dump(db: DatabaseSource, argv: Sequence[str], dest: Path, *,
                   env: Mapping[str, str] | None = None, stdin: bytes | None = None,
                   explain: Callable[[PipelineError], str] = str) -> ArchiveResult:
    """`argv | zstd > dest`, failures worded by `explain` and scrubbed of the password."""
    try:
        done = await compress(argv, dest, env=env, stdin=stdin)
    except PipelineError as exc:
        raise DumpError(_scrub(f"dump of {db} failed: {explain(exc)}",
                               db.password)) from None
    return ArchiveResult(file=dest, sha256=done.sha256, size=done.size, source_path=db.name,
                         kind="database", engine=db.engine)


def _scrub(message: str, password: str | None) -> str:
    """Defence in depth: no client is known to echo the password, but none may reach a log."""
    return message.replace(password, "***") if password else message
