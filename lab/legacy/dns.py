"""The legacy site's public DNS: BIND serving the site's zone (site.yaml `dns`) on this machine's
loopback, for as long as the site is up. It is the zone the cutover changes (RFC 2136 updates,
signed with the TSIG key in settings.tsig_key_file) and the one the prober asks.

Every `up` starts from the zone as site.yaml writes it (earlier runs' updates and their journal
are dropped), so a cutover in one run never leaks into the next. named runs in the foreground
(-g) in its own session, recorded in the site's pidfiles like the hosts' daemons, so `down`
stops it with them.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import time
from pathlib import Path

from lab.dns_server import NAMED, soa_answers, spawn_named
from lab.legacy import procs
from lab.legacy.config import ZoneSpec
from shared.dns import TsigKey

ADDRESS = "127.0.0.1"
KEY_NAME = "ferry-cutover"
START_TIMEOUT_S = 30.0


def pidfile(run_dir: Path) -> Path:
    return run_dir / "site.named.pid"


def key(key_file: Path) -> TsigKey:
    """The cutover's TSIG key: the one in key_file, or a new one written there (0600)."""
    if key_file.exists():
        return TsigKey.from_file(key_file)
    made = TsigKey(KEY_NAME, base64.b64encode(secrets.token_bytes(32)).decode())
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.touch(mode=0o600)
    key_file.write_text(made.bind_text())
    return made


def start(zone: ZoneSpec, folder: Path, key_file: Path, run_dir: Path, log: Path) -> int:
    """Start named for `zone` from its site.yaml records; the pid."""
    if not Path(NAMED).exists():
        raise RuntimeError(f"{NAMED} is not installed (deploy/lab/build-images.sh installs bind9)")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    records = {name: str(address) for name, address in zone.records.items()}
    process = spawn_named(folder, zone.zone, records, zone.ttl, zone.port, key(key_file),
                          ADDRESS, log)
    procs.write_pidfile(pidfile(run_dir), process.pid)
    return process.pid


async def answers(zone: ZoneSpec) -> bool:
    return await soa_answers(zone.zone, ADDRESS, zone.port)


async def wait_answering(zone: ZoneSpec, run_dir: Path, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not await answers(zone):
        if procs.recorded_pid(pidfile(run_dir)) is None:
            raise RuntimeError(f"named exited at start: {_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"named did not answer within {START_TIMEOUT_S:.0f}s: {_tail(log)}")
        await asyncio.sleep(0.1)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace").strip()[-1500:]
    except OSError:
        return "(no log)"
