"""One of Ferryman's services as its own OS process (`python -m services.<name>`), with the
test's settings, so that a test can kill -9 it for real and start it again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from shared.settings import Settings
from shared.settings import environment_of

REPO = Path(__file__).resolve().parents[1]


def settings_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """This process's environment without its FERRY_*, plus `settings` as FERRY_* variables
    (what Settings() in the child reads back), plus `overrides` (FERRY_PROVIDER="sim" ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(environment_of(settings, **overrides))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServiceProcess:
    def __init__(self, service: str, settings: Settings, log: Path, **overrides: str):
        self.service = service
        self.env = settings_env(settings, log_format="json", **overrides)
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> int:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.service}"], cwd=REPO, env=self.env,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self.process.pid

    def kill(self) -> int:
        """kill -9, as a crash; the process must have been running."""
        assert self.process is not None and self.process.poll() is None, \
            f"{self.service} is not running (exit {self.process and self.process.returncode})"
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        assert self.process.returncode == -signal.SIGKILL
        return self.process.pid

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (a graceful stop), SIGKILL if it is still there after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
