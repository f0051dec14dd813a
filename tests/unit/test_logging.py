"""Logging: structlog's events and the libraries' standard-library records come out alike."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Logs as a service does: a library's records (one with a traceback, one under a bound
# context, one below the libraries' level) and structlog's events, configured twice.
PROGRAM = r"""
import logging, sys
import structlog
from shared.logging import configure_logging, get_logger
from shared.settings import Settings

settings = Settings(log_format=sys.argv[1], log_level="info")
configure_logging(settings)
configure_logging(settings)
logging.getLogger("aio_pika").warning("Connection to %s closed", "amqp://broker")
logging.getLogger("aio_pika").info("a library's info is not shown")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("asyncpg.pool").exception("connection lost")
structlog.contextvars.bind_contextvars(correlation_id="c-1")
logging.getLogger("aiormq.connection").warning("heartbeat missed")
get_logger("services.creator.handlers").info("VM created", vm="app1")
get_logger("services.creator.handlers").debug("below the level: not shown")
"""


def own_env() -> dict[str, str]:
    """This environment without FERRY_ settings, which would change what PROGRAM sets."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}


def run_json() -> str:
    return subprocess.run([sys.executable, "-c", PROGRAM, "json"], cwd=REPO, env=own_env(),
                          capture_output=True, text=True, timeout=60, check=True).stderr


def test_json_lines_from_structlog_and_the_libraries():
    """With log_format=json every stderr line is one JSON object with level, logger, event and
    timestamp, whether structlog or a library logged it; a traceback stays inside its line."""
    err = run_json()
    lines = [json.loads(line) for line in err.splitlines()]
    assert [(e["level"], e["logger"], e["event"]) for e in lines] == [
        ("warning", "aio_pika", "Connection to amqp://broker closed"),
        ("error", "asyncpg.pool", "connection lost"),
        ("warning", "aiormq.connection", "heartbeat missed"),
        ("info", "services.creator.handlers", "VM created"),
    ]
    assert all(e["timestamp"].endswith("Z") for e in lines)
    assert "ZeroDivisionError: division by zero" in lines[1]["exception"]
    assert lines[2]["correlation_id"] == lines[3]["correlation_id"] == "c-1"
    assert lines[3]["vm"] == "app1"


def test_console_on_a_terminal():
    """With log_format=auto on a terminal the lines are the console renderer's, libraries' too."""
    controller, terminal = pty.openpty()
    with subprocess.Popen([sys.executable, "-c", PROGRAM, "auto"], cwd=REPO, env=own_env(),
                          stdout=subprocess.DEVNULL, stderr=terminal) as child:
        os.close(terminal)
        out = b""
        while chunk := _read(controller):  # while it runs: a full terminal would block it
            out += chunk
        os.close(controller)
        assert child.wait(timeout=60) == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.decode())  # colours
    assert "Connection to amqp://broker closed" in text and "VM created" in text
    assert "[aio_pika]" in text and "[services.creator.handlers]" in text
    assert not any(line.startswith("{") for line in text.splitlines())


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the terminal's other end is closed and everything was read
        return b""
