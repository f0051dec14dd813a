"""Processes for the qemu provider: commands, detached children, liveness, stopping, QMP, locks.

Everything here is async and polls with deadlines: provider calls run under database row locks
and must not hold the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import AsyncIterator

from shared import proc
from shared.providers.base import ProviderError


async def run(*argv: str, check: bool = True, timeout: float = 60.0,
              stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run a short command; ProviderError if it fails (check) or takes longer than timeout."""
    shown = f"`{' '.join(argv)}`"
    try:
        done = await proc.run(argv, timeout=timeout, stdin=stdin, check=check, what=shown)
    except FileNotFoundError as exc:
        raise ProviderError(f"{argv[0]} is not installed") from exc
    except proc.CommandTimedOut:
        raise ProviderError(f"{shown} took over {timeout:.0f}s") from None
    except proc.CommandFailed as exc:
        raise ProviderError(f"{shown} exited {exc.returncode}: "
                            f"{exc.stderr_tail(500)}") from None
    return (done.returncode, done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"))


# Children spawn() started in this process: only those are reaped by alive(), never a pid some
# other part of the process (asyncio's child watcher) waits for.
_spawned: set[int] = set()


async def spawn(argv: list[str], *, log: Path, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a long-lived child in its own session (it outlives this process and is not hit by
    a Ctrl-C of the service), output appended to `log`."""
    def start() -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    cwd=cwd, env=env, start_new_session=True)
    try:
        child = await asyncio.to_thread(start)
    except FileNotFoundError as exc:
        raise ProviderError(f"{argv[0]} is not installed") from exc
    _spawned.add(child.pid)
    return child


def alive(pid: int | None, marker: str) -> bool:
    """Whether pid runs and its command line contains marker (guards against pid reuse)."""
    if not pid:
        return False
    if pid in _spawned:  # our child: reap it if it ended, or it stays a zombie
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                _spawned.discard(pid)
                return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    return marker.encode() in cmdline


async def wait_gone(pid: int, marker: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid, marker):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def stop(pid: int | None, marker: str, *, grace: float = 10.0, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after `grace`; `group` signals the process group the process leads
    (QEMU's guestfwd helpers). Fine if it is gone already."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not alive(pid, marker):
            return
        with contextlib.suppress(ProcessLookupError):
            if group and os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        if await wait_gone(pid, marker, wait):
            return
    raise ProviderError(f"process {pid} ({marker}) survived SIGKILL")


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


async def qmp(folder: Path, command: str, timeout: float = 5.0) -> dict:
    """One QMP command on folder/qmp.sock. The socket is reached through /proc/self/fd/<dir>, so
    run folders deeper than a unix socket path's 108 bytes work (QEMU binds it relative to its
    working directory, the run folder)."""
    dirfd = os.open(folder, os.O_PATH)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(f"/proc/self/fd/{dirfd}/qmp.sock"), timeout)
    finally:
        os.close(dirfd)
    try:
        async def answer() -> dict:
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionResetError("QMP closed the connection")
                message = json.loads(line)
                if "return" in message or "error" in message:
                    return message

        await asyncio.wait_for(reader.readline(), timeout)  # the greeting
        for cmd in ("qmp_capabilities", command):
            writer.write(json.dumps({"execute": cmd}).encode() + b"\n")
            await writer.drain()
            reply = await asyncio.wait_for(answer(), timeout)
        return reply
    finally:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def flock(path: Path, timeout: float = 120.0) -> AsyncIterator[None]:
    """An exclusive lock on a file, between coroutines and between processes (two services may
    hold a provider each). Polled, so no thread blocks while waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ProviderError(f"{path} stayed locked for {timeout:.0f}s") from None
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
