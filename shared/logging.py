"""structlog set-up: JSON when not on a terminal, pretty on one; context bound per message.

Everything that logs ends on one handler of the standard library's root logger, whose
structlog ProcessorFormatter renders both structlog's events and the plain `logging` records of
the libraries (aio-pika, aiormq, asyncpg, aiohttp) the same way: with log_format=json every
line on stderr is one JSON object with level, logger, event and timestamp."""

from __future__ import annotations

import logging
import sys

import structlog

from shared.settings import Settings

# Their INFO and DEBUG are per connection, frame or request; only their warnings and errors
# reached stderr before (through logging's last resort), and that stays so.
LIBRARIES = ("aio_pika", "aiormq", "asyncpg", "aiohttp")


class _FerryHandler(logging.StreamHandler):
    """The root logger's handler set up here (replaced, never added twice, on reconfiguring).
    It writes to sys.stderr as it is when a line is logged, not as it was when configured:
    pytest swaps it per test and closes the ones it swapped in."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer()
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    # Run on structlog's events as they are logged, and on the libraries' records when formatted.
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = _FerryHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _FerryHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
