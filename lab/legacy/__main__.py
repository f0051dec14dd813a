"""python -m lab.legacy up|down|status (as root; settings from FERRY_* like the services)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from lab.legacy import LegacyError, down, status, up
from shared.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.legacy", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    action = parser.parse_args(argv).action
    settings = Settings()
    try:
        if action == "up":
            site = asyncio.run(up(settings))
            for host in site.hosts.values():
                print(f"{host.name:6} {host.address:15} {', '.join(host.daemons):26} "
                      f"root {host.root}")
            print(f"reach them over SSH as root with {site.ssh_identity} "
                  f"(known hosts: {site.known_hosts})")
            print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in site.timings.items()))
        elif action == "down":
            asyncio.run(down(settings))
            print("legacy site down: no process, mount, namespace or veth left")
        else:
            rows = asyncio.run(status(settings))
            everything_up = True
            for row in rows:
                daemons = ", ".join(f"{d} {s}" for d, s in row.daemons.items())
                print(f"{row.name:6} {row.address:15} "
                      f"{'namespace' if row.namespace else 'no namespace':13} {daemons}")
                everything_up &= row.namespace and all(
                    s == "answers" for s in row.daemons.values())
            return 0 if everything_up else 1
    except LegacyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
