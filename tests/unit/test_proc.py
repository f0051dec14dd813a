"""The one subprocess runner (shared/proc.py), with real processes: what a timeout kills, what a
failure says, what reaches stdin."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

import pytest

from shared import proc
from tests.conftest import eventually


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for init to reap it counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def test_a_timeout_kills_the_whole_group_grandchildren_included(tmp_path: Path):
    """A command that outruns its timeout raises CommandTimedOut after its process group is
    killed: the shell and the sleep it started in the background both end."""
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $$ $! > {pids}; wait"
    with pytest.raises(proc.CommandTimedOut) as caught:
        # The outer bound: a runner that killed only the shell would hang here on the pipe the
        # background sleep still holds.
        await asyncio.wait_for(proc.run(["bash", "-c", script], timeout=1, what="the sleeper"),
                               30)
    assert str(caught.value) == "the sleeper did not finish in 1s"
    shell, grandchild = (int(word) for word in pids.read_text().split())
    await eventually(lambda: gone(shell) and gone(grandchild), timeout=10,
                     what="the shell and its background sleep to end")


async def test_a_cancelled_run_kills_its_group(tmp_path: Path):
    """Cancelling the caller ends the command's group too: nothing runs on unobserved."""
    pids = tmp_path / "pids"
    task = asyncio.create_task(proc.run(
        ["bash", "-c", f"sleep 300 & echo $$ $! > {pids}; wait"], timeout=300))
    await eventually(lambda: pids.exists() and pids.read_text().strip(), timeout=10,
                     what="the command to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    shell, grandchild = (int(word) for word in pids.read_text().split())
    await eventually(lambda: gone(shell) and gone(grandchild), timeout=10,
                     what="the shell and its background sleep to end")


async def test_a_non_zero_exit_raises_with_the_status_and_the_end_of_stderr():
    """CommandFailed carries argv, the exit status and stderr; its message ends with the
    last characters of stderr, not its first."""
    script = "head -c 5000 /dev/zero | tr '\\0' x >&2; echo ' the real cause' >&2; exit 3"
    with pytest.raises(proc.CommandFailed) as caught:
        await proc.run(["bash", "-c", script], timeout=30)
    error = caught.value
    assert error.returncode == 3 and error.argv == ("bash", "-c", script)
    assert str(error) == f"{shlex.join(error.argv)} exited 3: {error.stderr_tail()}"
    assert str(error).endswith("xxx the real cause")
    assert len(error.stderr_tail()) == proc.STDERR_TAIL_CHARS
    assert error.stderr.endswith(b"the real cause\n")


async def test_without_check_the_status_is_returned():
    """check=False: any exit status comes back with both outputs, nothing raised."""
    done = await proc.run(["bash", "-c", "echo out; echo err >&2; exit 4"], timeout=30,
                          check=False)
    assert (done.returncode, done.stdout, done.stderr) == (4, b"out\n", b"err\n")


async def test_stdin_is_delivered_byte_for_byte_and_is_empty_without_it():
    """Given stdin reaches the command whole (more than a pipe buffer); without it, EOF."""
    data = bytes(range(256)) * 1000  # larger than a pipe's buffer
    done = await proc.run(["cat"], timeout=30, stdin=data)
    assert done.stdout == data
    assert (await proc.run(["cat"], timeout=30)).stdout == b""


async def test_a_missing_program_is_the_os_error():
    """A program that does not exist raises FileNotFoundError, for the caller to word."""
    with pytest.raises(FileNotFoundError):
        await proc.run(["/nonexistent/program"], timeout=30)


async def test_a_pipe_carries_produce_into_consume_with_stdin_for_produce():
    """stdin goes to the first command, its output into the second, whose output returns."""
    first, second = await proc.pipe(["tr", "a-z", "A-Z"], ["rev"], timeout=30,
                                    stdin=b"hello\nworld\n")
    assert (first.returncode, second.returncode) == (0, 0)
    assert second.stdout == b"OLLEH\nDLROW\n"


async def test_a_pipe_names_the_side_that_failed():
    """With check, the failing side's argv, status and stderr; without, both statuses."""
    with pytest.raises(proc.CommandFailed) as caught:
        await proc.pipe(["bash", "-c", "echo data"], ["bash", "-c", "cat >/dev/null; "
                        "echo 'no room' >&2; exit 5"], timeout=30, what="the copy")
    assert caught.value.argv[0] == "bash" and caught.value.returncode == 5
    assert str(caught.value) == "the copy exited 5: no room"
    first, second = await proc.pipe(["bash", "-c", "exit 2"], ["cat"], timeout=30,
                                    check=False)
    assert (first.returncode, second.returncode) == (2, 0)


async def test_a_pipe_that_outruns_its_timeout_kills_both_sides(tmp_path: Path):
    """A timed-out pipe kills both groups: the producer's background child and the consumer."""
    pids = tmp_path / "pids"
    with pytest.raises(proc.CommandTimedOut):
        await asyncio.wait_for(
            proc.pipe(["bash", "-c", f"sleep 300 & echo $! > {pids}.1; wait"],
                      ["bash", "-c", f"echo $$ > {pids}.2; cat"], timeout=1), 30)
    producer_child = int(Path(f"{pids}.1").read_text())
    consumer = int(Path(f"{pids}.2").read_text())
    await eventually(lambda: gone(producer_child) and gone(consumer), timeout=10,
                     what="both sides of the pipe to end")
