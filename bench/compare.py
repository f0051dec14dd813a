"""Before and after: one bench run alternately on an earlier commit and on this tree.

A change's gain is the ratio of the two, from runs interleaved on the same machine in the same
minutes (order before, after, after, before, ... so that a drift in the machine's load falls on
both sides alike). The earlier commit is checked out in a git worktree under /tmp, which is
removed at the end; each run is a fresh process of `python -m bench.<name> ... --no-report`
(its JSON lands in that tree's bench/results; the comparison's JSON lands in this one's).

    .venv/bin/python -m bench.compare --before 3447a6a --pairs 2 pipeline --vms 1000 --no-ceilings
    .venv/bin/python -m bench.compare --before 3447a6a --pairs 2 gateway --clients 1000 --rounds 5
    .venv/bin/python -m bench.compare --before main --pairs 2 archive --size-mb 512 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, append_row, machine, now_stamp, write_result

# The figures compared, per bench: where they sit in a run's JSON.
FIGURES = {
    "pipeline": {"seconds": ("seconds",), "events/s": ("events_per_s",),
                 "CPU s (this process)": ("process_cpu_s",), "pg round trips/VM": ("pg_writes_per_vm",),
                 "hop p50 ms": ("hop_p50_ms",), "hop p99 ms": ("hop_p99_ms",)},
    "processes": {"seconds": ("seconds",), "events/s": ("events_per_s",),
                  "CPU s (Ferry's processes)": ("ferry_cpu_s",),
                  "CPU s (PostgreSQL, whole machine)": ("cpu", "servers", "postgres"),
                  "hop p50 ms": ("hop_p50_ms",), "hop p99 ms": ("hop_p99_ms",)},
    # The top-level gateway figures are one worker's. Since the gateway runs in its own process
    # (bench/gateway.py), its CPU per request is the gateway's processes' alone (before: the
    # bench process's, load generator included), and its database round trips are not counted.
    "gateway": {"req/s": ("gateway", "rps"), "p50 ms": ("gateway", "p50_ms"),
                "p99 ms": ("gateway", "p99_ms"), "CPU ms/request": ("gateway", "cpu_ms_per_request"),
                "pg round trips/request": ("gateway", "pg_writes_per_request"),
                "ratio to bare aiohttp": ("ratio_rps",),
                "2 workers req/s": ("two_workers", "gateway", "rps"),
                "2 workers ratio to bare": ("two_workers", "ratio_rps"),
                "open loop p99 ms": ("one_worker", "open_gateway", "p99_ms")},
    "archive": {"archiver MB/s": ("mb_per_s", "archiver"), "tar|zstd MB/s": ("mb_per_s", "tar_zstd"),
                "ratio to tar|zstd": ("ratio_archiver_to_tar_zstd",)},
}


def _figure(run: dict, path: tuple[str, ...]) -> float | None:
    """The figure at `path`, or None when that run's bench did not measure it (an earlier
    commit's bench, or a later one's that dropped it)."""
    for key in path:
        if not isinstance(run, dict) or run.get(key) is None:
            return None
        run = run[key]
    return float(run)


def _mean(values: list[float | None]) -> float | None:
    return None if not values or None in values else statistics.mean(values)


def _run(tree: Path, bench: str, args: list[str], variant: str) -> dict:
    env = {**os.environ, "FERRY_BENCH_VARIANT": variant}
    done = subprocess.run([sys.executable, "-m", f"bench.{bench}", *args, "--no-report"],
                          cwd=tree, env=env, capture_output=True, text=True, check=False)
    lines = [l for l in done.stderr.splitlines() if l.startswith("result: ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"bench.{bench} failed in {tree} (exit {done.returncode}):\n"
                         + done.stderr[-3000:])
    return json.loads(Path(lines[-1].removeprefix("result: ")).read_text())["runs"][-1]


def _worktree(ref: str) -> tuple[Path, str]:
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    path = Path(tempfile.mkdtemp(prefix=f"ferry-before-{sha[:8]}-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT,
                   capture_output=True, check=True)
    return path, sha


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the commit to compare this tree with")
    parser.add_argument("--pairs", type=int, default=2, help="before/after pairs (default 2)")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("bench", choices=sorted(FIGURES))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the bench's own flags")
    args = parser.parse_args(argv)
    started = now_stamp()
    before_tree, sha = _worktree(args.before)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    try:
        for i in range(args.pairs):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            for variant in order:
                tree = before_tree if variant == "before" else ROOT
                runs[variant].append(_run(tree, args.bench, args.args, variant))
                print(f"{variant} run {len(runs[variant])} done", file=sys.stderr)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT,
                       capture_output=True, check=False)
    figures = {}
    for label, path in FIGURES[args.bench].items():
        before = _mean([_figure(r, path) for r in runs["before"]])
        after = _mean([_figure(r, path) for r in runs["after"]])
        figures[label] = {"before": before, "after": after,
                          "ratio": after / before if before and after is not None else None}
    result = {"bench": f"compare-{args.bench}", "started": started, "machine": machine(),
              "before": sha, "bench_args": args.args, "pairs": args.pairs, "figures": figures,
              "runs": runs}
    path = write_result(f"compare-{args.bench}", result)
    if not args.no_report:
        for label, f in figures.items():
            append_row(f"compare-{args.bench}",
                       ["date (UTC)", "before", "bench flags", "pairs", "figure", "before (mean)",
                        "after (mean)", "after / before"],
                       [started, sha[:8], " ".join(args.args), args.pairs, label, f["before"],
                        f["after"], f["ratio"]])
    for label, f in figures.items():
        print(f"{label:28} before {f['before']:12.3f}  after {f['after']:12.3f}  "
              f"ratio {f['ratio']:.3f}" if f["ratio"] else f"{label}: not measured on both sides")
    print(f"result: {path}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
