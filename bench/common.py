"""What every benchmark shares: isolated settings (own schema, own queue prefix), clean-up,
percentiles, and the three outputs (JSON result, a row in docs/performance.md, a PNG plot).

Every figure is also given as a ratio against a baseline measured in the same process and the
same run, because this machine is shared (2 cores, other test runs): absolute numbers move,
ratios move much less."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path


from shared.settings import Settings
from services.reset import remove_everything

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"
PLOTS = ROOT / "docs" / "performance"
OPERATOR_TOKEN = "bench-operator-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_settings(name: str) -> Settings:
    """Settings of their own: schema `b_<tag>`, bus prefix `b<tag>`, a free gateway port."""
    tag = uuid.uuid4().hex[:10]
    port = free_port()
    return Settings(
        database_schema=f"b_{tag}",
        bus_prefix=f"b{tag}",
        retry_delays=(0.5, 2.0),
        gateway_port=port,
        # Plain HTTP: the benchmarks' baselines were measured so; TLS is not what they compare.
        gateway_plain_http=True,
        gateway_boot_port=0,
        gateway_url=f"http://127.0.0.1:{port}",
        operator_token=OPERATOR_TOKEN,
        state_dir=Path(tempfile.mkdtemp(prefix=f"ferry-bench-{name}-")),
        log_format="json",
        log_level="error",
        # Every simulated VM calls from 127.0.0.1, and the pipeline's VMs retry a 401 while the
        # transaction that issued their token has not committed yet (a real VM boots for
        # seconds first): the per-address token-failure limit would count them all as one
        # client guessing tokens.
        gateway_auth_failures=1_000_000,
    )


async def clean_up(settings: Settings, extra_queues: list[str] = ()) -> None:
    """Drop the run's schema, queues and exchange (what tests/conftest.py does for a test)."""
    await remove_everything(settings, tuple(extra_queues))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import os
    return {"host": platform.node(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "loadavg_at_start": load, "commit": commit}


def now_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def write_result(name: str, result: dict) -> Path:
    # FERRY_BENCH_RESULTS: elsewhere than the repository (the smoke test's runs are no results).
    folder = Path(os.environ.get("FERRY_BENCH_RESULTS") or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{now_stamp()}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


@contextlib.contextmanager
def profiled(path: str | None):
    """pyinstrument what runs inside, its text report written to `path` (no path: nothing)."""
    if not path:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        Path(path).write_text(profiler.output_text(unicode=True, color=False, show_all=False))


def finish(name: str, args, started: str, runs: list[dict], report=None, **extra) -> dict:
    """Every bench's end: the JSON result written, the table row and plot unless --no-report."""
    result = {"bench": name, "started": started, "machine": machine(), "args": vars(args),
              "runs": runs, **extra}
    if os.environ.get("FERRY_BENCH_VARIANT"):
        # Which code ran, when before/after pairs are run from copies of the tree.
        result["variant"] = os.environ["FERRY_BENCH_VARIANT"]
    path = write_result(name, result)
    if report is not None and not args.no_report:
        report()
    print(f"result: {path}", file=sys.stderr)
    return result


def append_row(name: str, header: list[str], row: list[object]) -> None:
    """Append a row to the table `## <name> runs` of docs/performance.md (made if missing)."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    title = f"## {name} runs"
    line = "| " + " | ".join(_cell(v) for v in row) + " |"
    if title not in text:
        text = text.rstrip("\n") + (
            f"\n\n{title}\n\n"
            + "| " + " | ".join(_cell(h) for h in header) + " |\n"
            + "|" + "|".join("---" for _ in header) + "|\n"
            + line + "\n"
        )
    else:
        start = text.index(title)
        rest = text[start:]
        lines = rest.split("\n")
        # The table is the block of lines starting with '|' after the title.
        i = next(n for n, l in enumerate(lines) if l.startswith("|"))
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        lines.insert(i, line)
        text = text[:start] + "\n".join(lines)
    DOC.write_text(text if text.endswith("\n") else text + "\n")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def plot_path(name: str) -> Path:
    PLOTS.mkdir(parents=True, exist_ok=True)
    return PLOTS / f"{name}.png"


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


class SocketWrites:
    """Counts this process's socket writes by the peer's port (5432: PostgreSQL, 5672:
    RabbitMQ). asyncpg writes once per round trip, so the 5432 count is the number of database
    round trips: a figure other people's load on the machine does not move."""

    PORTS = {5432: "pg", 5672: "amqp"}

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __enter__(self):
        from asyncio import selector_events

        cls = selector_events._SelectorSocketTransport
        self._cls, self._orig = cls, cls.write
        counts, ports = self.counts, self.PORTS

        def write(transport, data):
            port = getattr(transport, "_bench_port", None)
            if port is None:
                peer = transport.get_extra_info("peername")
                port = transport._bench_port = ports.get(peer[1] if peer else 0, "other")
            counts[port] = counts.get(port, 0) + 1
            return self._orig(transport, data)

        cls.write = write
        return self

    def __exit__(self, *exc):
        self._cls.write = self._orig

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.perf_counter() - self.start
