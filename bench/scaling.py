"""Time and peak RSS per VM as the VM count and the group count grow.

Each point is the pipeline bench (bench.pipeline, without its ceilings) in a fresh Python
process, so its peak RSS (ru_maxrss) is its own. A first point with no VM at all (the Host
started, nothing submitted) is the baseline: RSS per VM is (peak - baseline) / VMs, and time
per VM is also given relative to the smallest point's.

    .venv/bin/python -m bench.scaling --points 100x10,300x10,300x50,600x10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import ROOT, append_row, finish, now_stamp, plot_path, pyplot

CHILD = ("import asyncio, json, sys; from bench.pipeline import measure; "
         "r = asyncio.run(measure(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), "
         "float(sys.argv[4]), ceilings=False)); r.pop('hops', None); print(json.dumps(r))")


def point(vms: int, group_size: int, concurrency: int, timeout: float) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(vms), str(group_size),
                          str(concurrency), str(timeout)],
                         cwd=ROOT, capture_output=True, text=True, timeout=timeout + 120)
    if out.returncode:
        raise RuntimeError(f"point {vms}x{group_size} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default="100x10,300x10,300x50,600x10",
                        help="VMSxGROUP_SIZE,... (a group count is VMs / group size)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    started = now_stamp()
    base = point(0, 10, args.concurrency, 60)
    print(json.dumps({"baseline_rss_mb": base["peak_rss_mb"]}), flush=True)
    runs = []
    for spec in args.points.split(","):
        vms, size = (int(x) for x in spec.split("x"))
        r = point(vms, size, args.concurrency, args.timeout)
        r["ms_per_vm"] = r["seconds"] / vms * 1000
        r["rss_kb_per_vm"] = (r["peak_rss_mb"] - base["peak_rss_mb"]) * 1024 / vms
        runs.append(r)
        print(json.dumps({k: r[k] for k in ("vms", "groups", "seconds", "ms_per_vm",
                                             "peak_rss_mb", "rss_kb_per_vm", "events_per_s")}),
              flush=True)
    first = runs[0]["ms_per_vm"]
    for r in runs:
        r["ms_per_vm_vs_first"] = r["ms_per_vm"] / first
    def report():
        for r in runs:
            append_row("scaling", ["date (UTC)", "VMs", "groups", "s", "ms/VM", "ms/VM vs first",
                                   "peak RSS MB", "idle RSS MB", "RSS KB/VM", "events/s"],
                       [started, r["vms"], r["groups"], round(r["seconds"], 1), r["ms_per_vm"],
                        r["ms_per_vm_vs_first"], r["peak_rss_mb"], base["peak_rss_mb"],
                        r["rss_kb_per_vm"], r["events_per_s"]])
        plt = pyplot()
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        for size in sorted({r["group_size"] for r in runs}):
            pts = [r for r in runs if r["group_size"] == size]
            a.plot([r["vms"] for r in pts], [r["ms_per_vm"] for r in pts], "o-",
                   label=f"{size} VMs/group")
            b.plot([r["vms"] for r in pts], [r["rss_kb_per_vm"] for r in pts], "o-",
                   label=f"{size} VMs/group")
        a.set_xlabel("VMs"), a.set_ylabel("ms per VM (wall)"), a.legend(fontsize=7)
        b.set_xlabel("VMs"), b.set_ylabel("KB of peak RSS per VM (over idle)"), b.legend(fontsize=7)
        a.set_title("time per VM"), b.set_title(f"memory per VM (idle {base['peak_rss_mb']:.0f} MB)")
        fig.tight_layout()
        fig.savefig(plot_path("scaling"), dpi=110)
    return finish("scaling", args, started, runs, report, baseline=base)


if __name__ == "__main__":
    main()
