"""Ferryman's services as separate OS processes (`python -m services.<name>`), so that a kill -9
is a real one, and a supervisor that starts again whatever stopped, as systemd's
`Restart=on-failure` does for deploy/systemd/ferry@.service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]

# Every process of a running Ferryman: the six services and the gateway.
PROCESSES = ("archiver", "creator", "configurator", "provisioner", "coordinator", "cutover",
             "gateway")


@dataclass
class Kill:
    """One kill -9 of a running process, and the process started in its place."""

    name: str
    pid: int
    at: float  # time.monotonic()
    restarted_pid: int | None = None
    restarted_at: float | None = None


@dataclass
class Managed:
    name: str
    process: subprocess.Popen | None = None
    starts: int = 0
    kills: int = 0
    # Exits nobody asked for (a process that could not reach the broker or the database while
    # they restarted exits, and is started again).
    crashes: int = 0
    exit_codes: list[int] = field(default_factory=list)
    restart_at: float | None = None
    last_kill: Kill | None = None  # until the process started in its place runs


def service_argv(name: str) -> list[str]:
    return [sys.executable, "-m", f"services.{name}"]


class Supervisor:
    def __init__(self, env: dict[str, str], log_dir: Path, restart_delay: float = 1.0,
                 processes: tuple[str, ...] = PROCESSES,
                 argv: Callable[[str], list[str]] = service_argv):
        self.env = env
        self.log_dir = log_dir
        self.restart_delay = restart_delay
        self.argv = argv
        self.procs = {name: Managed(name) for name in processes}
        # Every kill of a running process, in order (a kill attempted while the process was
        # not running is not one), each with the process that replaced it.
        self.killed: list[Kill] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str) -> None:
        managed = self.procs[name]
        log = open(self.log_dir / f"{name}.log", "ab")
        try:
            managed.process = subprocess.Popen(
                self.argv(name), cwd=REPO, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        managed.starts += 1
        managed.restart_at = None
        if managed.last_kill is not None:
            managed.last_kill.restarted_pid = managed.process.pid
            managed.last_kill.restarted_at = time.monotonic()
            managed.last_kill = None

    def start_all(self) -> None:
        for name in self.procs:
            self.start(name)

    def kill(self, name: str) -> int | None:
        """kill -9 the process if it runs (its pid), else None and nothing is recorded; it is
        started again by `tend` after the delay."""
        managed = self.procs[name]
        proc = managed.process
        if proc is None or proc.poll() is not None:
            return None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.returncode != -signal.SIGKILL:
            # It exited by itself just before the signal: not a kill (tend counts the crash).
            return None
        managed.kills += 1
        managed.last_kill = Kill(name, proc.pid, time.monotonic())
        self.killed.append(managed.last_kill)
        managed.exit_codes.append(proc.returncode)
        managed.process = None
        managed.restart_at = time.monotonic() + self.restart_delay
        return proc.pid

    def tend(self) -> None:
        """Start again what was killed (once its delay passed) or exited by itself."""
        now = time.monotonic()
        for name, managed in self.procs.items():
            proc = managed.process
            if proc is not None and proc.poll() is not None:
                managed.crashes += 1
                managed.exit_codes.append(proc.returncode)
                managed.process = None
                managed.restart_at = now + self.restart_delay
            if managed.process is None and managed.restart_at is not None \
                    and now >= managed.restart_at:
                self.start(name)

    def all_running(self) -> bool:
        return all(m.process is not None and m.process.poll() is None
                   for m in self.procs.values())

    def stop_all(self, timeout: float = 20) -> None:
        """SIGTERM (a graceful stop), then SIGKILL what is still there after `timeout`."""
        for managed in self.procs.values():
            managed.restart_at = None
            if managed.process and managed.process.poll() is None:
                managed.process.terminate()
        deadline = time.monotonic() + timeout
        for managed in self.procs.values():
            proc = managed.process
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            managed.process = None

    def figures(self) -> dict[str, dict[str, int]]:
        return {name: {"kills": m.kills, "starts": m.starts, "crash_restarts": m.crashes}
                for name, m in self.procs.items()}


def sim_vm_pids(sim_folder: Path) -> list[int]:
    """The simulated VMs (shared.providers.simvm) still running for this run's sim folder: they
    are started by the services with their own session, and outlive a killed service."""
    marker = str(sim_folder)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in argv]
        if "shared.providers.simvm" in text and any(a.startswith(marker) for a in text):
            found.append(int(entry.name))
    return found


def kill_sim_vms(sim_folder: Path) -> int:
    killed = 0
    for pid in sim_vm_pids(sim_folder):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed
