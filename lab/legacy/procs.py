"""The legacy hosts' daemons: started in the host's namespace, chrooted into its root, in the
foreground (so the process we start *is* the daemon), recorded in pidfiles, stopped by pid.

A pidfile holds the pid and the process's start time (from /proc), so a recycled pid is never
taken for ours. `stop` also stops whatever else runs in the hosts' namespaces or with its root
in a host's root (an SSH session's tar, a command of `Site.run`): nothing may outlive `down`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from lab.legacy.config import HostSpec

# Inside the chroot, with a clean environment (nothing of this machine's, such as MYSQL_PWD).
CLEAN_ENV = ("/usr/bin/env", "-i",
             "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
             "LANG=C.UTF-8", "USER=root", "LOGNAME=root", "SHELL=/bin/sh")
# Debian 12's PostgreSQL, whose package the base image installs (deploy/lab/build-images.sh).
PG_MAJOR = "15"
DAEMON_ARGV = {
    "sshd": ("/usr/sbin/sshd", "-D", "-e"),
    # It drops to the mysql user itself; its error log goes to stderr (our log file).
    "mariadb": ("/usr/sbin/mariadbd", "--user=mysql"),
    "nginx": ("/usr/sbin/nginx", "-g", "daemon off;"),
    # Debian's cluster PG_MAJOR/main, started as pg_ctlcluster starts it (its configuration in
    # /etc/postgresql names the data directory) but in the foreground. postgres refuses to run
    # as root: setpriv execs it as the postgres user (runuser would stay behind as its parent).
    "postgresql": ("/usr/bin/setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                   "--reset-env", f"/usr/lib/postgresql/{PG_MAJOR}/bin/postgres",
                   "-c", f"config_file=/etc/postgresql/{PG_MAJOR}/main/postgresql.conf"),
}
STOP_GRACE_S = 30  # MariaDB flushes InnoDB on SIGTERM; it takes a second or two here


def host_command(namespace: str, root: Path, argv: tuple[str, ...] | list[str]) -> list[str]:
    """argv that runs `argv` on a legacy host: in its namespace, chrooted into its root."""
    return ["ip", "netns", "exec", namespace, "chroot", str(root), *CLEAN_ENV, *argv]


def start(host: HostSpec, root: Path, daemon: str, run_dir: Path, log_dir: Path) -> int:
    """Start one daemon, detached (its own session: it outlives `python -m lab.legacy up`)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{host.name}-{daemon}.log").open("wb") as log:  # this run's only
        process = subprocess.Popen(
            host_command(host.namespace, root, DAEMON_ARGV[daemon]), stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, start_new_session=True, close_fds=True)
    # `ip netns exec`, `chroot` and `env` each exec the next: this pid is the daemon's.
    write_pidfile(pidfile(run_dir, host.name, daemon), process.pid)
    return process.pid


def pidfile(run_dir: Path, host: str, daemon: str) -> Path:
    return run_dir / f"{host}.{daemon}.pid"


def write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {_start_time(pid)}\n")


def recorded_pid(path: Path) -> int | None:
    """The pid in `path` if that very process still runs, else None."""
    try:
        pid_text, started = path.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    _reap(pid)
    return pid if alive(pid) and _start_time(pid) == started else None


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop(pids: set[int], grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM, wait up to `grace_s`, SIGKILL the rest; returns pids still alive after that."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = {pid for pid in pids if alive(pid)}
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if alive(pid)}
            if pids:
                time.sleep(0.05)
        if not pids:
            return []
    return sorted(pids)


def rooted_in(roots: list[Path]) -> set[int]:
    """Processes whose root directory is one of `roots` (or below): the chrooted ones."""
    bases = [os.path.realpath(r) for r in roots]
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            root = os.readlink(f"/proc/{entry}/root")
        except OSError:
            continue
        if any(root == b or root.startswith(b + "/") for b in bases):
            found.add(int(entry))
    return found


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "gone"


def reap(pids: set[int]) -> None:
    for pid in pids:
        _reap(pid)


def _reap(pid: int) -> None:
    """Daemons started by this process are its children: collect their exit status (only
    for daemons' pids: other children belong to whoever started them, asyncio say)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
