"""Run a Python module as `python -m` would, after asking the kernel to refuse this process any
memory both writable and executable (prctl PR_SET_MDWE, Linux 6.3+): what the systemd unit's
MemoryDenyWriteExecute=yes imposes (there through a seccomp filter on mmap and mprotect).

    python -m tests.mdwe_run services.gateway

Exits 3, saying so, when the kernel cannot do it: a test must not pass without the guard."""

from __future__ import annotations

import ctypes
import runpy
import sys

PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1


def refuse_write_execute() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 or \
            libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) != PR_MDWE_REFUSE_EXEC_GAIN:
        sys.exit(f"mdwe_run: the kernel refused PR_SET_MDWE (errno {ctypes.get_errno()}); "
                 "Linux 6.3 or later is needed")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tests.mdwe_run MODULE [ARG ...]")
    refuse_write_execute()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
