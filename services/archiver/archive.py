"""Archives of a legacy host's paths: `tar` piped into `zstd`, written atomically, with the
sha256 and size taken on the way to disk.

The pipeline (`compress_to_file`) is shared with the database dumps: a producer program writes
a stream to stdout, zstd compresses it, and Python only reads zstd's output once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import secrets
import signal
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, Mapping, Protocol, Sequence

CHUNK = 1 << 20
ZSTD = ("zstd", "-T0", "-3", "-q", "-c")
STDERR_TAIL_BYTES = 2000


class ArchiveError(Exception):
    """A path could not be archived; the message says which and why."""


@dataclass(frozen=True)
class ArchiveResult:
    file: Path
    sha256: str
    size: int
    source_path: str  # the archived path, or the database name for a dump
    kind: Literal["path", "database"] = "path"
    engine: str | None = None  # the database engine, for dumps


# --- where a tar stream comes from ------------------------------------------------------------

class TreeSource(Protocol):
    """Something that can produce a tar stream of one of its directories on stdout.

    An `SshTree(host, port, user, key_file)` fits here by returning
    `["ssh", ..., "--", shlex.join(tar_create_argv(path, excludes, ...))]`: the tar runs remotely
    and its stream arrives on ssh's stdout."""

    def tar_command(self, path: str, excludes: Sequence[str]) -> list[str]: ...


@dataclass(frozen=True)
class LocalTree:
    """A local directory standing for a host's "/" (an example legacy host, or "/" itself)."""

    root: Path

    def tar_command(self, path: str, excludes: Sequence[str]) -> list[str]:
        directory = self.directory(path)
        acls, xattrs = local_tar_features()
        return tar_create_argv(str(directory), excludes, acls=acls, xattrs=xattrs)

    def directory(self, path: str) -> Path:
        relative = relative_path(path)
        return self.root / relative if relative else self.root

    def __str__(self) -> str:
        return f"local tree {self.root}"


def relative_path(path: str) -> str:
    """The host path without its leading "/" ("" for the root); ".." could leave the tree."""
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive path {path!r} must not contain '..'")
    return "/".join(parts)


def anchored_exclude(pattern: str) -> str:
    """`tmp/*` -> `./tmp/*`: relative to the archived path, never matching deeper `tmp` dirs.

    Members are named `./...`, and with --anchored a pattern must match from the start of the
    name, so `./tmp/*` excludes `./tmp/x` but keeps `./shared/tmp/x`. (`*` also matches "/",
    GNU tar's default for excludes, so `./tmp/*` drops everything below `./tmp` while keeping
    the directory itself; `tmp` alone drops the directory too.) A trailing "/" is dropped
    because tar's member names for directories carry none and would never match it."""
    cleaned = pattern.strip()
    while cleaned.startswith(("/", "./")):
        cleaned = cleaned[1:] if cleaned.startswith("/") else cleaned[2:]
    cleaned = cleaned.rstrip("/")
    if not cleaned:
        raise ArchiveError(f"exclude pattern {pattern!r} would exclude the whole path")
    return f"./{cleaned}"


def tar_create_argv(directory: str, excludes: Sequence[str], *, acls: bool,
                    xattrs: bool) -> list[str]:
    """GNU tar writing an archive of `directory` to stdout, member names relative to it, so it
    unpacks with `tar -x -C /newroot/<path>`."""
    argv = ["tar", "--create", "--file=-", f"--directory={directory}", "--numeric-owner",
            "--sparse", "--one-file-system",
            # Same tree, same bytes: sorted members and no atime/ctime in the pax headers, so
            # redoing an unchanged archive gives the same sha256 (unless it holds sparse
            # files: tar names their headers after its PID).
            "--sort=name", "--pax-option=delete=atime,delete=ctime"]
    if xattrs:
        argv.append("--xattrs")
    if acls:
        argv.append("--acls")
    # --anchored applies to the --exclude options after it.
    argv.append("--anchored")
    argv += [f"--exclude={anchored_exclude(p)}" for p in excludes]
    argv.append(".")
    return argv


@functools.cache
def local_tar_features() -> tuple[bool, bool]:
    """(acls, xattrs): whether this machine's tar was built with them; it refuses the options
    otherwise."""
    usage = subprocess.run(["tar", "--help"], capture_output=True, text=True, check=False).stdout
    return "--acls" in usage, "--xattrs" in usage


# --- the archive ------------------------------------------------------------------------------

async def archive_path(source: TreeSource, path: str, excludes: list[str],
                       dest: Path) -> ArchiveResult:
    """Archive `path` of `source` (minus `excludes`, relative to `path`) into `dest` as
    .tar.zst; `dest` is replaced atomically and only once the archive is complete."""
    all_excludes = [*excludes, *_own_output_excludes(source, path, dest)]
    argv = source.tar_command(path, all_excludes)
    try:
        sha256, size = await compress_to_file(argv, dest)
    except PipelineError as exc:
        raise ArchiveError(f"archive of {path} from {source} failed: {exc}") from None
    return ArchiveResult(file=dest, sha256=sha256, size=size, source_path=path)


def _own_output_excludes(source: TreeSource, path: str, dest: Path) -> list[str]:
    """Archiving a local tree that holds the archive folder itself (say "/" on this machine)
    must not read the archive being written, nor earlier ones."""
    if not isinstance(source, LocalTree):
        return []
    try:
        inside = dest.parent.resolve().relative_to(source.directory(path).resolve())
    except (ValueError, OSError):
        return []
    return [str(inside)] if str(inside) != "." else [dest.name, dest.name + ".partial-*"]


def remove_abandoned_partials(folder: Path) -> list[Path]:
    """Remove partial files whose writer on this host is gone (an archiver killed mid-write).
    Partials of live writers are left alone."""
    removed = []
    for partial in folder.glob("*.partial-*-*"):
        try:
            pid = int(partial.name.rsplit(".partial-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if not _alive(pid):
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the pipeline: producer | zstd > file -----------------------------------------------------

class PipelineError(Exception):
    """The producer or zstd failed, or the file could not be written; the message has the
    failing programs' exit status and stderr tail."""


async def compress_to_file(argv: Sequence[str], dest: Path, *,
                           env: Mapping[str, str] | None = None) -> tuple[str, int]:
    """Run `argv | zstd` into `dest` atomically; returns (sha256, size) of the written file.

    `env` is the producer's whole environment (secrets go there, never into argv)."""
    # Unique per writer: two deliveries of one request may archive the same path at once, and
    # the last rename wins with a whole file either way.
    partial = dest.with_name(f"{dest.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    producer = compressor = None
    try:
        _make_folder(dest.parent)
        # An OS pipe, so the uncompressed stream goes from producer to zstd without Python.
        read_end, write_end = os.pipe()
        try:
            compressor = await _spawn(ZSTD, stdin=read_end, stdout=subprocess.PIPE)
            producer = await _spawn(argv, stdin=subprocess.DEVNULL, stdout=write_end, env=env)
        finally:
            os.close(read_end)
            os.close(write_end)
        (sha256, size), producer_tail, zstd_tail = await asyncio.gather(
            _write_stream(compressor.stdout, partial),
            _stderr_tail(producer.stderr), _stderr_tail(compressor.stderr),
        )
        await asyncio.gather(producer.wait(), compressor.wait())
        _check_exits([(argv[0], producer.returncode, producer_tail),
                      (ZSTD[0], compressor.returncode, zstd_tail)])
        await asyncio.to_thread(_publish, partial, dest)
        return sha256, size
    except BaseException:
        await _stop(producer, compressor)
        partial.unlink(missing_ok=True)
        raise


async def _spawn(argv: Sequence[str], *, stdin, stdout, env=None) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, limit=CHUNK)
    except OSError as exc:
        raise PipelineError(f"cannot run {argv[0]}: {exc}") from None


async def _write_stream(stream: asyncio.StreamReader, partial: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as handle:
            async for chunk in _chunks(stream):
                # Off the event loop: hashing and writing a MiB is slow enough to stall the
                # service's broker heartbeats on a big archive.
                await asyncio.to_thread(_write_chunk, handle, digest, chunk)
                size += len(chunk)
            await asyncio.to_thread(_flush_to_disk, handle)
    except OSError as exc:
        raise PipelineError(f"cannot write {partial}: {exc}") from None
    return digest.hexdigest(), size


async def _chunks(stream: asyncio.StreamReader):
    """Whole MiBs (a pipe read alone gives far less), then the rest."""
    while True:
        try:
            yield await stream.readexactly(CHUNK)
        except asyncio.IncompleteReadError as end:
            if end.partial:
                yield end.partial
            return


def _write_chunk(handle, digest, chunk: bytes) -> None:
    digest.update(chunk)
    handle.write(chunk)


def _flush_to_disk(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipelineError(f"cannot create {folder}: {exc}") from None


def _publish(partial: Path, dest: Path) -> None:
    """Rename into place, then fsync the folder so the rename itself survives a crash."""
    try:
        os.replace(partial, dest)
        folder = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        raise PipelineError(f"cannot move {partial} into place: {exc}") from None


async def _stderr_tail(stream: asyncio.StreamReader) -> str:
    """All of stderr is read (a chatty program must not block on a full pipe), the end kept."""
    kept: deque[bytes] = deque()
    kept_size = 0
    while chunk := await stream.read(CHUNK):
        kept.append(chunk)
        kept_size += len(chunk)
        while kept_size - len(kept[0]) >= STDERR_TAIL_BYTES:
            kept_size -= len(kept.popleft())
    text = b"".join(kept)[-STDERR_TAIL_BYTES:].decode("utf-8", "replace")
    return text.strip()


def _check_exits(exits: list[tuple[str, int | None, str]]) -> None:
    failures = [f"{program} {_describe_exit(code)}" + (f": {tail}" if tail else "")
                for program, code, tail in exits if code != 0]
    if failures:
        raise PipelineError("; ".join(failures))


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited {code}"


async def _stop(*processes: asyncio.subprocess.Process | None) -> None:
    """Failing or cancelled: no program may outlive the call and keep writing."""
    for process in processes:
        if process is not None and process.returncode is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass
    for process in processes:
        if process is not None:
            await process.wait()
