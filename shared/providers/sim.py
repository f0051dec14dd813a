"""The simulator provider: VM records on disk, each "VM" a process speaking to the gateway as
a rebuilt VM would (see simvm). For the demo until real VMs arrive; not a test double."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from shared.providers.base import (
    BootSource, ProviderDisk, ProviderError, ProviderVm, VmSpec, planned_disks,
)

# Every create_vm call, one JSON line each (see SimProvider._log_create_call).
CREATE_CALLS = "create-calls.log"
# Its VMs are processes on this machine: one host.
HOST = "local"


class SimProvider:
    name = "sim"
    simulated = True

    def __init__(self, folder: Path, cafile: Path | None = None):
        self.folder = folder
        # The CA the simulated VMs trust, as a real migration image carries the installation's.
        self.cafile = cafile
        self.folder.mkdir(parents=True, exist_ok=True)
        self._children: dict[int, subprocess.Popen] = {}

    def _path(self, ref: str) -> Path:
        return self.folder / f"{ref}.json"

    def _load(self, ref: str) -> dict:
        path = self._path(ref)
        if not path.exists():
            raise ProviderError(f"sim: no VM {ref}")
        return json.loads(path.read_text())

    def _save(self, ref: str, record: dict) -> None:
        tmp = self._path(ref).with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self._path(ref))

    async def placements(self, spec: VmSpec, *, idempotency_key: str) -> list[str]:
        return [HOST]

    async def create_vm(self, spec: VmSpec, *, idempotency_key: str,
                        host: str | None = None) -> ProviderVm:
        if host is not None and host != HOST:
            raise ProviderError(f"sim: no host {host!r} (its one host: {HOST})")
        ref = "sim-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:12]
        mac = "52:54:00:" + ":".join(ref[4 + i:6 + i] for i in (0, 2, 4))
        made = not self._path(ref).exists()
        if made:
            self._save(ref, {"spec": spec.model_dump(mode="json"), "mac": mac,
                             "network": "migration", "pid": None, "kernel_args": {}})
        self._log_create_call(ref, idempotency_key, made)
        return ProviderVm(ref=ref, mac=mac, host=HOST)

    def _log_create_call(self, ref: str, key: str, made: bool) -> None:
        """One line per create call, durable across restarts of the calling service, so a test
        (tests/chaos) can count the calls and the VMs really made from outside the process."""
        line = json.dumps({"ref": ref, "key": key, "made": made, "pid": os.getpid()}) + "\n"
        # O_APPEND: the processes sharing this folder each add whole lines.
        fd = os.open(self.folder / CREATE_CALLS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    async def attach(self, ref: str, network: str) -> None:
        record = self._load(ref)
        record["network"] = network
        self._save(ref, record)

    async def boot(self, ref: str, source: BootSource, *, kernel_args: dict[str, str] | None = None) -> None:
        record = self._load(ref)
        await self.power_off(ref)
        if kernel_args:
            # What the migration image passes on to the new root (gateway.env) for first boot.
            record["kernel_args"] = kernel_args
        record["cafile"] = str(self.cafile) if self.cafile else None
        self._save(ref, record)
        with open(self.folder / f"{ref}.log", "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "shared.providers.simvm", "--inventory",
                 str(self._path(ref)), "--source", str(source)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._children[child.pid] = child
        record["pid"] = child.pid
        self._save(ref, record)
        self._reap()

    def _reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]

    async def power_off(self, ref: str) -> None:
        record = self._load(ref)
        pid = record.get("pid")
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            record["pid"] = None
            self._save(ref, record)

    async def delete(self, ref: str) -> None:
        if self._path(ref).exists():
            await self.power_off(ref)
            self._path(ref).unlink()

    async def addresses(self, ref: str) -> list[str]:
        return []

    async def disks(self, ref: str) -> list[ProviderDisk]:
        return planned_disks(VmSpec.model_validate(self._load(ref)["spec"]))

    async def set_outbound(self, group: str, open_: bool) -> None:
        pass  # a simulated VM is a process on this machine's loopback: no network to block

    async def close(self) -> None:
        self._reap()
