"""Group networks of the qemu provider (docs/lab-notes.md, "Group networks").

Per group, a network namespace holding a bridge with the group's gateway address(es), one tap per
VM, and 10.0.2.100/32 with a relay (nsrelay) listening on port 80 that connects to the gateway on
the root namespace's loopback, and an uplink to the root namespace whose outbound direction is
blocked until the cutover opens it (qemu_uplink). So until then its VMs reach each other, the
gateway, and nothing else, while this machine reaches them. QEMU runs inside the namespace
(`ip netns exec`); deleting it removes the uplink, then `ip netns del` takes bridge and taps.

Each namespace the provider makes is recorded in lab_dir/nets/<namespace>/ (before it is made,
so teardown finds it whatever happens), with its relay's pid and log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from ipaddress import ip_interface
from pathlib import Path

from shared.providers import nsrelay, qemu_uplink
from shared.providers.base import ProviderError
from shared.providers.qemu_proc import alive, flock, read_json, run, spawn, stop, tail, write_json

# Where every lab VM sees the gateway, in both phases (slirp guestfwd, then this relay).
GUEST_GATEWAY_IP = "10.0.2.100"
BRIDGE = "br0"
RELAY_START_S = 10.0


def group_namespace(group: str) -> str:
    """The network namespace of a group's final network; `ip netns exec` into it to reach its
    VMs. Short enough to be an interface name too (≤ 15 characters)."""
    return "fm-" + hashlib.sha256(group.encode()).hexdigest()[:8]


def tap_name(ref: str) -> str:
    return "fmt" + hashlib.sha256(ref.encode()).hexdigest()[:10]


class GroupNetworks:
    def __init__(self, lab_dir: Path, target: tuple[str, int], python: str, env: dict[str, str]):
        self.root = lab_dir / "nets"
        self.locks = lab_dir / "locks"
        self.target = target
        self.python = python
        self.env = env

    def lock(self, namespace: str):
        return flock(self.locks / f"{namespace}.lock")

    def recorded(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/net.json"))

    @staticmethod
    def exists(namespace: str) -> bool:
        return Path("/run/netns", namespace).exists()

    # --- making (callers hold the namespace's lock) -------------------------------------------

    async def ensure(self, namespace: str, group: str, bridge_addresses: list[str]) -> None:
        """The namespace, its bridge with these addresses and the gateway's, and the relay."""
        folder = self.root / namespace
        folder.mkdir(parents=True, exist_ok=True)
        record = read_json(folder / "net.json") or {}
        record.update(namespace=namespace, group=group)
        write_json(folder / "net.json", record)
        if not self.exists(namespace):
            await run("ip", "netns", "add", namespace)
        await run("ip", "-n", namespace, "link", "set", "lo", "up")
        if BRIDGE not in await self._links(namespace):
            await run("ip", "-n", namespace, "link", "add", BRIDGE, "type", "bridge")
        await run("ip", "-n", namespace, "link", "set", BRIDGE, "up")
        have = await self._addresses(namespace, BRIDGE)
        for address in [*bridge_addresses, f"{GUEST_GATEWAY_IP}/32"]:
            if address not in have:
                await run("ip", "-n", namespace, "addr", "add", address, "dev", BRIDGE)
        subnets = sorted({str(ip_interface(a).network) for a in bridge_addresses})
        await qemu_uplink.ensure(namespace, subnets, blocked=not record.get("outbound_open"))
        await self._ensure_relay(namespace)

    async def set_outbound(self, namespace: str, open_: bool) -> None:
        """Open (or block again) the group's outbound connections; remembered, so a namespace
        rebuilt later comes back the same."""
        path = self.root / namespace / "net.json"
        record = read_json(path)
        if record is None or not self.exists(namespace):
            raise ProviderError(f"qemu: no group network {namespace} (no VM of the group is "
                                "on it)")
        await qemu_uplink.set_blocked(namespace, not open_)
        record["outbound_open"] = open_
        write_json(path, record)

    async def ensure_tap(self, namespace: str, tap: str) -> None:
        if tap not in await self._links(namespace):
            await run("ip", "-n", namespace, "tuntap", "add", "dev", tap, "mode", "tap")
        await run("ip", "-n", namespace, "link", "set", tap, "master", BRIDGE, "up")

    async def remove_tap(self, namespace: str, tap: str) -> None:
        if self.exists(namespace) and tap in await self._links(namespace):
            await run("ip", "-n", namespace, "link", "del", tap)

    async def delete(self, namespace: str) -> None:
        """Stop the relay and delete the namespace (bridge and taps go with it)."""
        folder = self.root / namespace
        relay = read_json(folder / "relay.json") or {}
        await stop(relay.get("pid"), self._relay_marker(namespace), grace=5)
        # The uplink first: `ip netns del` frees the namespace's devices only later, and its
        # root end would linger while a new namespace of the same name is being built.
        await qemu_uplink.remove(namespace)
        if self.exists(namespace):
            await run("ip", "netns", "del", namespace)
        shutil.rmtree(folder, ignore_errors=True)

    # --- the relay ------------------------------------------------------------------------------

    @staticmethod
    def _relay_marker(namespace: str) -> str:
        return f"shared.providers.nsrelay\0{namespace}\0"

    async def _ensure_relay(self, namespace: str) -> None:
        folder = self.root / namespace
        marker = self._relay_marker(namespace)
        relay = read_json(folder / "relay.json") or {}
        if alive(relay.get("pid"), marker):
            if tuple(relay.get("target", ())) == self.target:
                return
            await stop(relay["pid"], marker, grace=5)  # the gateway moved (another port)
        log = folder / "relay.log"
        log.write_bytes(b"")
        host, port = self.target
        child = await spawn([self.python, "-m", "shared.providers.nsrelay", namespace,
                             GUEST_GATEWAY_IP, "80", host, str(port)], log=log, env=self.env)
        write_json(folder / "relay.json", {"pid": child.pid, "target": [host, port]})
        deadline = time.monotonic() + RELAY_START_S
        while nsrelay.READY not in log.read_text(errors="replace"):
            if child.poll() is not None or time.monotonic() > deadline:
                await stop(child.pid, marker, grace=1)
                raise ProviderError(f"the gateway relay in {namespace} did not start: {tail(log)}")
            await asyncio.sleep(0.05)

    # --- reading --------------------------------------------------------------------------------

    @staticmethod
    async def _links(namespace: str) -> set[str]:
        _, out, _ = await run("ip", "-n", namespace, "-j", "link", "show")
        return {link["ifname"] for link in json.loads(out or "[]")}

    @staticmethod
    async def _addresses(namespace: str, dev: str) -> set[str]:
        _, out, _ = await run("ip", "-n", namespace, "-j", "addr", "show", "dev", dev)
        return {f"{a['local']}/{a['prefixlen']}" for link in json.loads(out or "[]")
                for a in link.get("addr_info", []) if a.get("family") == "inet"}

