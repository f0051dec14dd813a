"""The chaos suite's supervisor keeps its own record of kills (tests/chaos/supervisor.py): only
a kill of a running process is one, and each records the process started in its place. The
wave's kill figures come from that record, so it is checked here with plain processes."""

from __future__ import annotations

import signal
import time

from tests.chaos.supervisor import Supervisor

LONG = ["sleep", "600"]


def supervisor(tmp_path, argv=lambda name: LONG) -> Supervisor:
    return Supervisor({}, tmp_path / "logs", restart_delay=0.0, processes=("a", "b"),
                      argv=argv)


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_a_kill_of_a_running_process_is_recorded_with_its_replacement(tmp_path):
    sup = supervisor(tmp_path)
    sup.start_all()
    try:
        first = sup.procs["a"].process.pid
        assert sup.kill("a") == first
        assert [(k.name, k.pid, k.restarted_pid) for k in sup.killed] == [("a", first, None)]
        sup.tend()
        replacement = sup.procs["a"].process.pid
        assert replacement != first
        assert sup.killed[0].restarted_pid == replacement
        assert sup.figures()["a"] == {"kills": 1, "starts": 2, "crash_restarts": 0}
    finally:
        sup.stop_all()


def test_a_kill_attempted_while_the_process_is_not_running_is_none(tmp_path):
    """Killed and not yet started again: a second kill finds nothing to kill, returns None
    and records nothing."""
    sup = supervisor(tmp_path)
    sup.restart_delay = 600.0
    sup.start_all()
    try:
        assert sup.kill("b") is not None
        assert sup.kill("b") is None
        sup.tend()  # the delay has not passed: still not running
        assert sup.kill("b") is None
        assert [k.name for k in sup.killed] == ["b"]
        assert sup.procs["b"].kills == 1
    finally:
        sup.stop_all()


def test_a_process_that_exits_by_itself_is_a_crash_not_a_kill(tmp_path):
    sup = supervisor(tmp_path, argv=lambda name: ["true"])
    sup.start("a")
    try:
        wait_for(lambda: sup.procs["a"].process.poll() is not None)
        assert sup.kill("a") is None
        sup.tend()
        assert sup.killed == [] and sup.procs["a"].crashes == 1
        assert sup.procs["a"].exit_codes == [0]
        assert -signal.SIGKILL not in sup.procs["a"].exit_codes
    finally:
        sup.stop_all()
