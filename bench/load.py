"""One load-generating process of bench.gateway: simulated VMs posting state_update and
message_update, in a process of its own so that the server measured never shares a Python
interpreter (or its event loop) with the clients.

It reads one job (a JSON line) on stdin, opens its client session, says `ready`, waits for
`go` (so that every load process starts at once), runs, and writes its result (a JSON line).

- closed loop: every VM of the job at once, `rounds` times a state_update then a
  message_update, each request sent when the previous one was answered;
- open loop: `rate` requests/s for `seconds` s, each sent at its scheduled time whether or not
  the earlier ones were answered; its latency counts from that scheduled time, so a server that
  falls behind shows it (no coordinated omission).

    python -m bench.load < job.json     (bench.gateway runs it)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp

# Connections an open-loop process keeps at most: enough for the rates measured, and a bound
# on what a server that stops answering can pile up.
OPEN_LOOP_CONNECTIONS = 256


def requests_of(vm_id: str, k: int, label: str) -> tuple[tuple[str, dict], tuple[str, dict]]:
    return ((f"/v1/vms/{vm_id}/state", {"state": "configuring", "step": f"{label}-step-{k}"}),
            (f"/v1/vms/{vm_id}/messages", {"level": "info", "text": f"{label} step {k} done"}))


class Tally:
    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []

    async def post(self, session: aiohttp.ClientSession, url: str, body: dict, token: str,
                   since: float) -> None:
        try:
            async with session.post(url, json=body,
                                    headers={"Authorization": f"Bearer {token}"}) as answer:
                await answer.read()
                if answer.status >= 400:
                    self.errors.append(str(answer.status))
        except (aiohttp.ClientError, TimeoutError) as exc:
            # A request past the job's timeout counts as an error, with its latency.
            self.errors.append(type(exc).__name__)
        self.latencies_ms.append((time.perf_counter() - since) * 1000)


async def closed_loop(session, job: dict, tally: Tally) -> None:
    async def one_vm(vm_id: str, token: str) -> None:
        for k in range(job["rounds"]):
            for path, body in requests_of(vm_id, k, job["label"]):
                await tally.post(session, job["url"] + path, body, token, time.perf_counter())

    await asyncio.gather(*(one_vm(vm_id, token) for vm_id, token in job["vms"]))


async def open_loop(session, job: dict, tally: Tally) -> None:
    total = int(job["rate"] * job["seconds"])
    vms = job["vms"]
    start = time.perf_counter()
    sent: set[asyncio.Task] = set()
    for n in range(total):
        due = start + n / job["rate"]
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        vm_id, token = vms[n % len(vms)]
        path, body = requests_of(vm_id, n // len(vms), job["label"])[n % 2]
        task = asyncio.create_task(tally.post(session, job["url"] + path, body, token, due))
        sent.add(task)
        task.add_done_callback(sent.discard)
    if sent:
        await asyncio.wait(sent, timeout=job.get("timeout", 60))


async def run(job: dict) -> dict:
    limit = job.get("connections") or OPEN_LOOP_CONNECTIONS
    timeout = aiohttp.ClientTimeout(total=job.get("timeout", 60))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                     timeout=timeout) as session:
        tally = Tally()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started = time.time()
        cpu0 = time.process_time()
        await (closed_loop if job["mode"] == "closed" else open_loop)(session, job, tally)
        return {"started": started, "ended": time.time(), "cpu_s": time.process_time() - cpu0,
                "latencies_ms": [round(v, 3) for v in tally.latencies_ms],
                "errors": len(tally.errors), "error_kinds": sorted(set(tally.errors))[:5]}


def main() -> None:
    job = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(run(job))), flush=True)


if __name__ == "__main__":
    main()
