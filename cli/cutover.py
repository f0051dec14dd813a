"""The cutover from the CLI: `ferry verify`'s answer, and a run followed step by step."""

from __future__ import annotations

import time
from typing import Callable

POLL_S = 0.5
TIMEOUT_S = 3 * 3600.0


def step_line(step: dict) -> str:
    seconds = f"{step['seconds']:.1f}s" if step.get("seconds") is not None else "-"
    line = f"  {step['status']:<11} {step['name']:<24} {seconds:>8}"
    if step.get("detail"):
        line += f"  {step['detail']}"
    if step.get("error"):
        line += f"  error: {step['error']}"
    if step.get("undo_error"):
        line += f"  undo failed: {step['undo_error']}"
    return line


def follow_cutover(runs: Callable[[], dict], run_id: str, say: Callable[[str], None]) -> dict:
    """Print each step of run `run_id` as it finishes (and again when undone); the ended run."""
    shown: dict[int, str] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        run = next((r for r in runs()["runs"] if r["id"] == run_id), None)
        for step in (run or {}).get("steps", []):
            if step["status"] != "running" and shown.get(step["position"]) != step["status"]:
                shown[step["position"]] = step["status"]
                say(step_line(step))
        if run and run["status"] in ("completed", "rolled_back", "failed", "refused"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"cutover run {run_id} still {run and run['status']}")
        time.sleep(POLL_S)
    if run["status"] == "completed":
        downtime = run.get("downtime_s")
        say("cutover completed" + (f": downtime {downtime:.1f}s, measured by a prober from "
                                   "outside" if downtime is not None else
                                   " (prepared)" if run["prepare"] else ""))
    else:
        say(f"cutover {run['status'].replace('_', ' ')}: {run.get('reason')}")
    return run


def print_verification(answer: dict, say: Callable[[str], None]) -> None:
    say(f"{answer['group']} ({answer['status']}): the new VMs, before DNS moves. "
        "Add to /etc/hosts:")
    for site in answer["sites"]:
        say(f"  {site['hosts_line']}")
    say("or ask for a name at its new address:")
    for site in answer["sites"]:
        for line in site["curl"]:
            say(f"  {line}")
    say("checks:" if answer["checks"] else "checks: none in the plan")
    for check in answer["checks"]:
        say(f"  {'pass' if check['ok'] else 'FAIL'} {check['vm']} {check['url']} at "
            f"{check['address']}: {check['detail']}")
