"""Running a command to its end: the one way every part of Ferryman runs a short-lived program.

A command runs in a session of its own, so when it outlives its timeout (or the caller is
cancelled) the whole process group goes: an `ssh` that rsync started, a `sleep` a remote
script's shell left behind. Killing only the direct child would leave those running, holding
our pipes open and, for ssh, the remote command alive.

Errors carry what ran (argv, or the caller's own words for it), the exit status and stderr;
callers turn them into their own domain errors. A missing program is the OS's
FileNotFoundError, raised as it is: only the caller knows how to say that.

Long-lived children (QEMU, the simulated VMs) and streaming pipelines (the archiver's
`tar | zstd`, hashed as it is written) are other jobs and start their processes themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from typing import Mapping, Sequence

STDERR_TAIL_CHARS = 400


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    def stderr_tail(self, limit: int = STDERR_TAIL_CHARS) -> str:
        return tail(self.stderr, limit)


class CommandError(Exception):
    """A command did not succeed; `what` names it in messages."""

    def __init__(self, message: str, argv: Sequence[str], what: str):
        super().__init__(message)
        self.argv = tuple(argv)
        self.what = what


class CommandTimedOut(CommandError):
    """The command outran its timeout; its process group was killed and reaped."""

    def __init__(self, argv: Sequence[str], what: str, timeout: float):
        super().__init__(f"{what} did not finish in {timeout:.0f}s", argv, what)
        self.timeout = timeout


class CommandFailed(CommandError):
    """The command exited with a status other than 0."""

    def __init__(self, completed: Completed, what: str):
        detail = completed.stderr_tail()
        super().__init__(f"{what} exited {completed.returncode}"
                         + (f": {detail}" if detail else ""), completed.argv, what)
        self.completed = completed

    @property
    def returncode(self) -> int:
        return self.completed.returncode

    @property
    def stderr(self) -> bytes:
        return self.completed.stderr

    def stderr_tail(self, limit: int = STDERR_TAIL_CHARS) -> str:
        return self.completed.stderr_tail(limit)


def tail(data: bytes, limit: int = STDERR_TAIL_CHARS) -> str:
    """The end of a program's output as text, for a message."""
    return data.decode(errors="replace").strip()[-limit:]


async def run(argv: Sequence[str], *, timeout: float, stdin: bytes | None = None,
              what: str | None = None, check: bool = True,
              env: Mapping[str, str] | None = None) -> Completed:
    """Run `argv` to its end, `stdin` as its input (else /dev/null), and collect its output.

    CommandTimedOut after `timeout` seconds (the group killed and reaped first); with `check`,
    CommandFailed on an exit status other than 0."""
    argv = tuple(argv)
    what = what or shlex.join(argv)
    process = await _start(argv, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                           stdout=subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        await _kill_group(process)
        raise CommandTimedOut(argv, what, timeout) from None
    except BaseException:
        await _kill_group(process)
        raise
    done = Completed(argv, process.returncode, out, err)
    if check and done.returncode != 0:
        raise CommandFailed(done, what)
    return done


async def pipe(produce: Sequence[str], consume: Sequence[str], *, timeout: float,
               stdin: bytes | None = None, what: str | None = None, check: bool = True,
               ) -> tuple[Completed, Completed]:
    """`produce | consume`, the data going from one to the other through an OS pipe (never
    through Python); `stdin` goes to `produce`. Both must end within `timeout` together.

    With `check`, CommandFailed names the first of the two that failed; without, the caller
    reads both exit statuses (say, to explain each side's failure in its own words)."""
    produce, consume = tuple(produce), tuple(consume)
    what = what or f"{shlex.join(produce)} | {shlex.join(consume)}"
    first = second = None
    try:
        read_end, write_end = os.pipe()
        try:
            first = await _start(produce, stdout=write_end,
                                 stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE)
            second = await _start(consume, stdin=read_end, stdout=subprocess.PIPE)
        finally:
            # The children hold their own copies; ours would keep `consume` from seeing EOF.
            os.close(read_end)
            os.close(write_end)
        (out1, err1), (out2, err2) = await asyncio.wait_for(
            asyncio.gather(first.communicate(stdin), second.communicate()), timeout)
    except TimeoutError:
        await _kill_groups(first, second)
        raise CommandTimedOut((*produce, "|", *consume), what, timeout) from None
    except BaseException:
        await _kill_groups(first, second)
        raise
    done = (Completed(produce, first.returncode, out1, err1),
            Completed(consume, second.returncode, out2, err2))
    if check:
        for side in done:
            if side.returncode != 0:
                raise CommandFailed(side, what)
    return done


async def _start(argv: Sequence[str], *, stdin, stdout,
                 env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
    # start_new_session: the command leads a process group of its own, which _kill_group ends
    # whole; a Ctrl-C of this process does not reach it, and a cancelled call kills it.
    return await asyncio.create_subprocess_exec(
        *argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env,
        start_new_session=True)


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL to the command's process group, then reap the command. The group is named by
    the leader's pid, which no other process can take while a member of the group lives."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


async def _kill_groups(*processes: asyncio.subprocess.Process | None) -> None:
    await asyncio.gather(*(_kill_group(p) for p in processes if p is not None))
