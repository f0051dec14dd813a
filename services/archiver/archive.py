"""Archives of a legacy host's paths: `tar` piped into `zstd`, written atomically, with the
sha256 and size of the file written.

The pipeline (`compress_to_file`) is shared with the database dumps: a producer program writes
a stream to stdout, zstd compresses it, `tee` writes the compressed stream into the partial file
and passes it on to a thread that hashes it. The uncompressed stream never crosses Python, and
the hash is done when the stream ends: only the fsync of the file is left after it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
from collections import deque
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Literal, Mapping, Protocol, Sequence

from services.archiver.watch import Progress, file_size, megabytes, out_of_space, quiet_for
from shared.archive_store import free_bytes

CHUNK = 1 << 20
ZSTD = ("zstd", "-T0", "-3", "-q", "-c")
# The compressed stream into the partial file (named after it) and on to the hash. With
# --output-error=exit a full store stops the stream at once rather than at its end.
TEE = ("tee", "--output-error=exit")
# The pipe from tee to the hashing thread: 1 MiB (Linux's limit for anyone) rather than 64 KiB,
# so the thread wakes for a MiB at a time.
HASH_PIPE_BYTES = 1 << 20
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
    server_version: str | None = None  # what its server answered (PostgreSQL's version_num)
    # Complete, but worth an operator's look: files that changed while tar read them.
    warnings: tuple[str, ...] = ()


# --- what every root archive gets -------------------------------------------------------------

# A live host's "/" holds pseudo filesystems (and scratch space) whose contents mean nothing on
# another machine, and reading /proc/kcore or /dev/zero never ends: their contents are left
# out, the directories themselves kept (the new root needs them as mount points). This is the
# only place the rule lives; docs/plan.md ("Archive") documents it.
ROOT_EXCLUDES = ("proc/*", "sys/*", "dev/*", "run/*", "tmp/*")

# Named before "." so they lead a root archive's stream: the configure script unpacks them
# first, so ACLs that tar stores with user and group *names* resolve on the new VM
# (docs/lab-notes.md, pitfall 2). Each is archived again where "." reaches it, which is
# harmless: the later copy overwrites the first with the same bytes. Only those present.
ROOT_FIRST = ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow")

# GNU tar's exit status 1 ("some files differ"): when creating, a file changed while it was
# read. On a live host that is normal (a log line written meanwhile); the archive is whole, so
# it is a warning to record, not a failure. Exit 2 (fatal) still fails.
TAR_FILES_CHANGED = 1


# --- where a tar stream comes from ------------------------------------------------------------

class TreeSource(Protocol):
    """Something that can produce a tar stream of one of its directories on stdout.

    `first` names members (relative to `path`) to put at the head of the stream, each only if
    it exists there. `services.archiver.ssh.SshTree` fits here by returning
    `["ssh", ..., shlex.join(tar_create_argv(...))]`: the tar runs on the legacy host and its
    stream arrives on ssh's stdout.

    A source may also have `explain(error: PipelineError) -> str`, to word its own failures
    (SshTree tells an unreachable host from a refused key), and `no_data_timeout_s`: how long
    its stream may send nothing before it is given up (StreamStalled)."""

    def tar_command(self, path: str, excludes: Sequence[str],
                    first: Sequence[str] = ()) -> list[str]: ...


@dataclass(frozen=True)
class LocalTree:
    """A local directory standing for a host's "/" (an example legacy host, or "/" itself)."""

    root: Path
    no_data_timeout_s: float | None = None  # a hung mount under the root stalls the stream

    def tar_command(self, path: str, excludes: Sequence[str],
                    first: Sequence[str] = ()) -> list[str]:
        directory = self.directory(path)
        acls, xattrs = local_tar_features()
        present = [name for name in first if os.path.lexists(directory / name)]
        return tar_create_argv(str(directory), excludes, acls=acls, xattrs=xattrs,
                               first=present)

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
                    xattrs: bool, first: Sequence[str] = ()) -> list[str]:
    """GNU tar writing an archive of `directory` to stdout, member names relative to it, so it
    unpacks with `tar -x -C /newroot/<path>`; the `first` members (which must exist) lead."""
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
    # "./etc/passwd", spelled as "." spells it, so excludes match both copies alike. After
    # "--": no name is ever read as an option.
    argv += ["--", *(f"./{relative_path(name)}" for name in first), "."]
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
    .tar.zst; `dest` is replaced atomically and only once the archive is complete.

    A root archive ("/") also leaves out ROOT_EXCLUDES and starts with ROOT_FIRST."""
    is_root = relative_path(path) == ""
    all_excludes = [*(ROOT_EXCLUDES if is_root else ()), *excludes,
                    *_own_output_excludes(source, path, dest)]
    argv = source.tar_command(path, all_excludes, ROOT_FIRST if is_root else ())
    try:
        done = await compress(argv, dest, tolerated={
            TAR_FILES_CHANGED: "tar: files changed while it read them, archived as read"},
            no_data_timeout=getattr(source, "no_data_timeout_s", None))
    except PipelineError as exc:
        explain = getattr(source, "explain", None)
        reason = explain(exc) if explain else str(exc)
        raise ArchiveError(f"archive of {path} from {source} failed{exc.after()}: "
                           f"{reason}") from None
    return ArchiveResult(file=dest, sha256=done.sha256, size=done.size, source_path=path,
                         warnings=done.warnings)


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
    failing programs' exit status and stderr tail, `failures` the same as
    (program, exit status, stderr tail) for whoever words them better (an SSH source)."""

    def __init__(self, message: str, failures: Sequence[tuple[str, int | None, str]] = ()):
        super().__init__(message)
        self.failures = list(failures)
        self.received: int | None = None  # bytes of the stream that had arrived, if known

    def after(self) -> str:
        """" after 12.3 MB received" for a stream that had brought something, else "". The count
        is the watch's last look, a fraction of a second old at most."""
        if not self.received or self.received < 100_000:
            return ""
        return f" after {megabytes(self.received)} received"


class StoreFull(PipelineError):
    """The archive store's filesystem ran out of space (or quota) while the file was written;
    the message says where, how much was written and how much is free."""


class StreamStalled(PipelineError):
    """No byte of the stream arrived for `seconds`; its programs were killed."""

    def __init__(self, seconds: float, producer: str):
        super().__init__(f"no data from {producer} for {seconds:g} s")
        self.seconds = seconds


@dataclass(frozen=True)
class Compressed:
    sha256: str
    size: int
    warnings: tuple[str, ...] = ()


async def compress_to_file(argv: Sequence[str], dest: Path, *,
                           env: Mapping[str, str] | None = None) -> tuple[str, int]:
    """Run `argv | zstd` into `dest` atomically; returns (sha256, size) of the written file."""
    done = await compress(argv, dest, env=env)
    return done.sha256, done.size


@dataclass
class _Pipeline:
    """The programs of one archive stream, upstream first; None until spawned (a cap off: no
    throttle)."""

    producer: asyncio.subprocess.Process | None = None
    throttle: asyncio.subprocess.Process | None = None
    compressor: asyncio.subprocess.Process | None = None
    writer: asyncio.subprocess.Process | None = None  # tee, into the partial file
    # The sha256 of what tee passes on, hashed in a thread (hashlib: OpenSSL's SHA extensions;
    # coreutils' sha256sum, 6 times slower here, took a core from zstd on a 2-core machine).
    hashing: asyncio.Future | None = None

    def named(self, producer_name: str) -> list[tuple[str, asyncio.subprocess.Process]]:
        """(name in messages, process) of those spawned, upstream first."""
        names = (producer_name, PV[0], ZSTD[0], TEE[0])
        processes = (self.producer, self.throttle, self.compressor, self.writer)
        return [(name, p) for name, p in zip(names, processes) if p is not None]

    def all(self) -> list[asyncio.subprocess.Process]:
        return [p for _, p in self.named("")]


async def compress(argv: Sequence[str], dest: Path, *, env: Mapping[str, str] | None = None,
                   stdin: bytes | None = None,
                   tolerated: Mapping[int, str] | None = None,
                   no_data_timeout: float | None = None) -> Compressed:
    """Run `argv | zstd` into `dest` atomically.

    `env` is the producer's whole environment; `stdin` is written to the producer's stdin
    (secrets go in one of those, never into argv, which every user can read in `ps`).
    `tolerated` maps producer exit statuses that still mean a complete stream to what they
    mean; they become warnings (with the producer's stderr tail) instead of a failure.
    `no_data_timeout`: StreamStalled once no byte has come for that long. A full archive store
    is StoreFull. On any failure the partial file is gone."""
    # Unique per writer: two deliveries of one request may archive the same path at once, and
    # the last rename wins with a whole file either way.
    partial = dest.with_name(f"{dest.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    run = _Pipeline()
    progress = None
    try:
        _make_folder(dest.parent)
        await _spawn_pipeline(run, argv, partial, env, stdin)
        progress = Progress(run.compressor.pid, partial)
        tails, sha256 = await _stream(run, stdin, progress, no_data_timeout, argv[0])
        for process, name in ((run.writer, TEE[0]), (run.compressor, ZSTD[0])):
            if process.returncode != 0 and out_of_space(tails[name]):
                raise _store_full(partial, dest, tails[name])
        warnings = []
        meaning = (tolerated or {}).get(run.producer.returncode)
        if meaning is not None:
            # Not named after argv[0]: over SSH that is ssh, passing tar's status through.
            warnings.append(f"{meaning} (exit status {run.producer.returncode})"
                            + (f": {tails[argv[0]]}" if tails[argv[0]] else ""))
        _check_exits([(name, 0 if meaning and process is run.producer else process.returncode,
                       tails[name]) for name, process in run.named(argv[0])])
        size = await _sync(partial, dest)
        await asyncio.to_thread(_publish, partial, dest)
        return Compressed(sha256=sha256, size=size, warnings=tuple(warnings))
    except PipelineError as exc:
        await _stop_pipeline(run)
        partial.unlink(missing_ok=True)
        exc.received = progress.received() if progress else None
        raise
    except BaseException:
        await _stop_pipeline(run)
        partial.unlink(missing_ok=True)
        raise


async def _spawn_pipeline(run: _Pipeline, argv: Sequence[str], partial: Path,
                          env: Mapping[str, str] | None, stdin: bytes | None) -> None:
    """producer | [pv] | zstd | tee partial | the hashing thread, joined by OS pipes: hashing
    and writing run beside the compression, not after it (reading the file back afterwards
    held the archiver at 0.61-0.71 of `tar | zstd`, docs/performance.md). Spawned downstream
    first, the producer last (it starts the stream); the throttle first of all, so a missing
    pv is what a capped run reports."""
    stream, into = os.pipe()  # the producer's stdout
    try:
        cap = _STREAM_CAP.get()
        if cap:
            run.throttle, stream = await _spawn_throttle(cap, stream)
        run.compressor, stream = await _spawn_reading(
            [*_dies_with_us(), *ZSTD], stream)
        run.writer, stream = await _spawn_reading(
            [*_dies_with_us(), *TEE, str(partial)], stream)
        # The thread owns tee's output from here (and closes it); tee exiting ends it.
        run.hashing = asyncio.ensure_future(asyncio.to_thread(_sha256_of_stream, stream))
        run.producer = await _spawn(
            argv, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=into, env=env)
    finally:
        os.close(into)


async def _spawn_reading(argv: Sequence[str],
                         stream: int) -> tuple[asyncio.subprocess.Process, int]:
    """`argv` reading the pipe end `stream` (closed here, whatever happens); its process and
    the read end of a new pipe it writes to."""
    out, into = os.pipe()
    try:
        process = await _spawn(argv, stdin=stream, stdout=into)
    except BaseException:
        os.close(out)
        raise
    finally:
        os.close(into)
        os.close(stream)
    return process, out


async def _stream(run: _Pipeline, stdin: bytes | None, progress: Progress,
                  no_data_timeout: float | None, name: str) -> tuple[dict[str, str], bytes]:
    """Run the pipeline to its end: the stderr tail of each program by name, and the sha256
    of the stream written. StreamStalled (all killed) once no byte has reached zstd for
    `no_data_timeout` seconds (None: never). The watch runs either way: its last look is what
    a failure reports as received, zstd's counter being gone with it."""
    work = asyncio.ensure_future(_to_the_end(run, stdin, name))
    watch = asyncio.ensure_future(quiet_for(progress, no_data_timeout))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done() and not watch.done():
            work.cancel()  # cancelled from outside: compress kills the programs
    if work.done():
        return work.result()
    received = progress.received()
    await _stop_pipeline(run)  # their stderr then ends, and with it `work`
    await asyncio.gather(work, return_exceptions=True)
    stalled = StreamStalled(no_data_timeout, name)
    stalled.received = received
    raise stalled


async def _to_the_end(run: _Pipeline, stdin: bytes | None,
                      name: str) -> tuple[dict[str, str], str]:
    named = run.named(name)
    *tails, _ = await asyncio.gather(
        *(_stderr_tail(process.stderr) for _, process in named), _feed(run.producer, stdin))
    await asyncio.gather(*(process.wait() for _, process in named))
    # After the programs: tee's exit closed the pipe, so the thread has its last byte.
    sha256 = await asyncio.shield(run.hashing)
    return {program: tail for (program, _), tail in zip(named, tails)}, sha256


def _sha256_of_stream(fd: int) -> str:
    """sha256 of all that comes on the pipe `fd` until its end (closed here)."""
    with open(fd, "rb", buffering=0) as stream:
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, HASH_PIPE_BYTES)
        except OSError:
            pass  # the default size: more wake-ups, the same hash
        digest = hashlib.sha256()
        buffer = bytearray(HASH_PIPE_BYTES)
        view = memoryview(buffer)
        while n := stream.readinto(buffer):
            digest.update(view[:n])
        return digest.hexdigest()


async def _stop_pipeline(run: _Pipeline) -> None:
    """Kill the programs; the hashing thread then reads the end of its pipe and is done."""
    await _stop(*run.all())
    if run.hashing is not None:
        await asyncio.gather(run.hashing, return_exceptions=True)


def _store_full(partial: Path, dest: Path, detail: str) -> StoreFull:
    """The store's filesystem is full: the partial file goes first, so that the space it took
    counts in what is reported free (what the operator has to work with)."""
    written = file_size(partial)
    partial.unlink(missing_ok=True)
    return StoreFull(f"archive store full: no space left in {dest.parent} after writing "
                     f"{megabytes(written)} of {dest.name} (the partial file is removed; "
                     f"{megabytes(free_bytes(dest.parent))} free now): {detail}")


# --- the bandwidth cap ------------------------------------------------------------------------

# pv from Debian (deploy/local/lib.sh installs it), quiet, at most N bytes/s.
PV = ("pv", "--quiet", "--rate-limit")
# Bytes per second each stream compress() reads may pass at most (0: uncapped). A context
# variable, set once around one VM's archiving (archive_stream_cap), rather than a parameter of
# every path archive and database dump function on the way down to here.
_STREAM_CAP: ContextVar[int] = ContextVar("archive_stream_cap", default=0)


@contextmanager
def archive_stream_cap(bytes_s: int) -> Iterator[None]:
    """Within this block, every archive stream is read at most `bytes_s` bytes per second
    (FERRY_ARCHIVE_BANDWIDTH_BYTES_S), so the legacy host's production keeps serving while it
    is archived; 0: uncapped."""
    token = _STREAM_CAP.set(max(0, bytes_s))
    try:
        yield
    finally:
        _STREAM_CAP.reset(token)


async def _spawn_throttle(cap: int, stream: int) -> tuple[asyncio.subprocess.Process, int]:
    """pv between the producer and zstd, reading `stream` (closed here) at `cap` bytes/s; its
    process and the read end of its output. The bytes still pass from program to program,
    never through Python; the producer is slowed by the full pipe, as it would be by a slow
    network."""
    return await _spawn_reading([*_dies_with_us(), *PV, str(cap)], stream)


@functools.cache
def _dies_with_us() -> tuple[str, ...]:
    """A prefix that has the kernel kill the program when this process dies (util-linux's
    setpriv, PR_SET_PDEATHSIG), where available. zstd writes the file itself, not to a pipe
    of ours, so after a kill -9 of the archiver it would run on, fed by its producer, to the
    end of the stream; killed, its producer dies of the broken pipe too."""
    return ("setpriv", "--pdeathsig", "KILL", "--") if shutil.which("setpriv") else ()


async def _feed(process: asyncio.subprocess.Process, data: bytes | None) -> None:
    """Write `data` to the producer's stdin and close it (EOF). A producer that exits without
    reading it (ssh failing to connect) is not an error here: its exit status tells why."""
    if data is None:
        return
    try:
        process.stdin.write(data)
        await process.stdin.drain()
        process.stdin.close()
        await process.stdin.wait_closed()
    except (BrokenPipeError, ConnectionResetError):
        pass


async def _spawn(argv: Sequence[str], *, stdin, stdout, env=None) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, limit=CHUNK)
    except OSError as exc:
        raise PipelineError(f"cannot run {argv[0]}: {exc}") from None


async def _sync(partial: Path, dest: Path) -> int:
    """Make the file tee wrote durable (in a thread: a big archive's fsync would stall the
    service's broker heartbeats); its size."""
    try:
        return await asyncio.to_thread(_fsync_file, partial)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a delayed allocation failing at fsync
            raise _store_full(partial, dest, str(exc)) from None
        raise PipelineError(f"cannot write {partial}: {exc}") from None


def _fsync_file(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


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
    failed = [(program, code, tail) for program, code, tail in exits if code != 0]
    if failed:
        raise PipelineError("; ".join(
            f"{program} {_describe_exit(code)}" + (f": {tail}" if tail else "")
            for program, code, tail in failed), failed)


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
