"""A simulated VM: says to the gateway what a rebuilt VM says, without rebuilding anything.

It stands in for real VMs until the lab's QEMU provider, and the demo says so. Booted from
the network it plays the migration image running its script; booted from disk it plays
local.start (first-boot check-in, database load, a replica's hold and replication)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import proc
from shared.vmclient import VmClient

# The steps the configuration script reports, in its order.
SCRIPT_STEPS = (
    "find-disks", "partition", "lvm", "filesystems", "mount", "unpack-archives", "database-dumps",
    "kernel", "initrd", "bootloader", "fstab", "network", "config-management", "host-keys",
    "first-boot",
)
SYNTAX_CHECK_S = 60.0


async def run_migration_image(vm: VmClient, pause: float = 0.0) -> None:
    script = await vm.script()
    await _check_syntax(script)
    await vm.message(f"simulated VM: fetched a {len(script)}-byte script; bash -n passed; "
                     "nothing is partitioned or unpacked")
    for step in SCRIPT_STEPS:
        await vm.state("configuring", step)
        if step == "host-keys":
            await vm.host_keys([simulated_host_key()])
        if pause:
            await asyncio.sleep(pause)
    await vm.state("configured", "done")


def simulated_host_key() -> str:
    """A fresh ed25519 public key, reported as the script reports the new root's: a simulated
    VM has no sshd, so nothing ever presents it, and the cutover (which needs an address the
    sim provider never has) never connects with it; the operator sees it pinned all the same."""
    key = Ed25519PrivateKey.generate().public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line.decode() + " simulated"


async def _check_syntax(script: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as handle:
        handle.write(script)
    try:
        done = await proc.run(["bash", "-n", handle.name], timeout=SYNTAX_CHECK_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the rendered script does not parse: {done.stderr.decode()[:500]}")
    finally:
        os.unlink(handle.name)


async def run_first_boot(vm: VmClient, role: str, pause: float = 0.0) -> None:
    await vm.state("provisioned", "first-boot")
    if role == "app":
        return
    await vm.state("loading", "load-dumps")
    await vm.message("simulated VM: no dump is really loaded")
    if pause:
        await asyncio.sleep(pause)
    if role == "db-master":
        await vm.state("ready", "loaded", detail={"log_file": "sim-bin.000001", "log_pos": 4})
        return
    while not (await vm.master(wait=25))["complete"]:
        pass
    await vm.replication()
    await vm.state("replicating", "replication-started")
    await vm.state("ready", "replicating")


async def _main(inventory: Path, source: str) -> None:
    record = json.loads(inventory.read_text())
    args = record["kernel_args"]
    pause = float(os.environ.get("FERRY_SIM_PAUSE", "0.2"))
    # retries=8: the rendered scripts call the gateway with `curl -f --retry 8
    # --retry-connrefused --retry-all-errors`, so a real VM rides out a gateway restart or a
    # database restart; the simulated one must do as they do.
    async with VmClient(args["ferry.gateway"], args["ferry.vm"], args["ferry.token"],
                        retries=8, cafile=record.get("cafile")) as vm:
        try:
            if source == "network":
                await run_migration_image(vm, pause)
            else:
                await run_first_boot(vm, record["spec"]["role"], pause)
        except Exception as exc:
            await vm.state("failed", "simulation", message=str(exc)[:1000])
            raise


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inventory", type=Path, required=True)
    parser.add_argument("--source", choices=["network", "disk"], required=True)
    opts = parser.parse_args()
    asyncio.run(_main(opts.inventory, opts.source))
