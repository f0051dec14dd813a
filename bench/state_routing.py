"""Before/after, in one process and one run, of routing `vm.state_changed` by target state.

The product publishes a state change as `vm.state_changed.<to_state>` and binds the provisioner
and the coordinator to `vm.state_changed.ready` only ("after"). "Before" binds them again to
every state change (`vm.state_changed.*`, patched into this process only), which is how the
product routed them until this change: nine deliveries per app VM each, most of them ignored,
each still costing an inbox look-up, a claim and an ack. Runs alternate to share the load.

    .venv/bin/python -m bench.state_routing --vms 200 --pairs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

from bench.common import append_row, finish, now_stamp
from bench.pipeline import measure
from services import runtime
from shared.topology import Topology

EVERY_CHANGE = "vm.state_changed.*"


@contextlib.contextmanager
def every_state_change_routing():
    """The routing before the change: both services hear every state change (the routers
    ignore the ones they do not act on, after the broker delivered them)."""
    product = runtime.topology

    def before() -> Topology:
        routed = product()
        bindings = dict(routed.bindings)
        for service in ("provisioner", "coordinator"):
            bindings[service] = tuple(EVERY_CHANGE if k.startswith("vm.state_changed.") else k
                                      for k in bindings[service])
        return Topology(bindings, routed.queue_limits)
    runtime.topology = before
    try:
        yield
    finally:
        runtime.topology = product


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=300)
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=2, help="before/after pairs, alternated")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    started = now_stamp()
    runs = []
    for n in range(args.pairs):
        order = ("before", "after") if n % 2 == 0 else ("after", "before")
        for variant in order:
            ctx = every_state_change_routing() if variant == "before" else contextlib.nullcontext()
            with ctx:
                r = asyncio.run(measure(args.vms, args.group_size, args.concurrency, args.timeout,
                                        ceilings=False))
            r["variant"] = variant
            runs.append(r)
            print(json.dumps({k: r[k] for k in ("variant", "vms", "seconds", "process_cpu_s",
                                                 "events_per_s", "deliveries", "hop_p50_ms",
                                                 "hop_p99_ms")}),
                  flush=True)
    def mean(variant, key):
        values = [r[key] for r in runs if r["variant"] == variant]
        return sum(values) / len(values)
    summary = {k: mean("after", k) / mean("before", k)
               for k in ("seconds", "process_cpu_s", "events_per_s", "deliveries", "hop_p50_ms",
                        "hop_p99_ms")}
    def report():
        for r in runs:
            append_row("state_routing", ["date (UTC)", "variant", "VMs", "s", "CPU s (this process)",
                                           "events/s", "deliveries", "hop p50 ms", "hop p99 ms"],
                       [started, r["variant"], r["vms"], round(r["seconds"], 1),
                        round(r["process_cpu_s"], 1),
                        r["events_per_s"], r["deliveries"], r["hop_p50_ms"], r["hop_p99_ms"]])
    print(json.dumps({"ratio_after_to_before": summary}), flush=True)
    return finish("state_routing", args, started, runs, report, ratio_after_to_before=summary)


if __name__ == "__main__":
    main()
