"""A group network's way out, and the block on it (docs/lab.md, "The public side").

Every group namespace gets a veth to the root namespace, its "uplink", so that this machine
(and, through it, the legacy site) reaches the group's VMs at their planned addresses: the
prober, `ferry verify`, the cutover's SSH and rsync, and the legacy side's DNAT all come in
that way. Outbound is the other direction, and it is blocked until the cutover lifts it
(design.md, "Verify"): in the namespace, a new connection from the bridge to the uplink is
refused (TCP reset, ICMP port-unreachable), so a test on a new VM can never touch production.
Inbound and the answers to it pass; the VMs always reach the gateway, which is local to the
namespace (10.0.2.100) and not forwarded.

    root ns: fmu-<hash> 10.214.x.y+1/30 ──veth── uplink 10.214.x.y+2/30 (group ns), default
    route via the root side; root ns routes each group subnet via the namespace side.

The root namespace forwards (net.ipv4.ip_forward=1): without it neither the DNAT from the
legacy side nor the VMs' opened outbound could cross it. The /30 comes from the namespace name,
so it is the same on every run; two groups hashing to the same /30 are refused by `ip` with a
clear error rather than sharing one.
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

from shared.providers.base import ProviderError
from shared.providers.qemu_proc import run

UPLINK = "uplink"  # the namespace's end of the veth
UPLINKS = ipaddress.ip_network("10.214.0.0/16")
OUTBOUND_CHAIN = "FERRY-OUTBOUND"


def root_link(namespace: str) -> str:
    """The root namespace's end of a group's uplink (≤ 15 characters)."""
    return "fmu-" + namespace.removeprefix("fm-")


def link_addresses(namespace: str) -> tuple[str, str]:
    """(root side, namespace side) of the group's /30, both without prefix."""
    slots = UPLINKS.num_addresses // 4
    slot = int(hashlib.sha256(namespace.encode()).hexdigest()[:8], 16) % slots
    base = UPLINKS.network_address + slot * 4
    return str(base + 1), str(base + 2)


def firewall_rules(blocked: bool) -> str:
    """The namespace's filter table, for iptables-restore: answers pass, the bridge's new
    connections to the uplink go through OUTBOUND_CHAIN, which refuses them while blocked."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             f":{OUTBOUND_CHAIN} - [0:0]",
             "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
             f"-A FORWARD -i br0 -o {UPLINK} -j {OUTBOUND_CHAIN}"]
    if blocked:
        lines += [f"-A {OUTBOUND_CHAIN} -p tcp -j REJECT --reject-with tcp-reset",
                  f"-A {OUTBOUND_CHAIN} -j REJECT --reject-with icmp-port-unreachable"]
    return "\n".join(lines + ["COMMIT", ""])


async def ensure(namespace: str, subnets: list[str], blocked: bool) -> None:
    """The uplink of `namespace`, routes to its subnets from the root namespace, and its
    firewall in the recorded state (idempotent)."""
    outer, inner = link_addresses(namespace)
    link = root_link(namespace)
    code, _, _ = await run("ip", "-n", namespace, "link", "show", UPLINK, check=False)
    if code != 0:
        # A root end without its peer is left over from a namespace deleted a moment ago (the
        # kernel frees a dead namespace's devices later, asynchronously): it must go first.
        await remove(namespace)
        await run("ip", "link", "add", link, "type", "veth", "peer", "name", UPLINK,
                  "netns", namespace)
    await run("ip", "addr", "replace", f"{outer}/30", "dev", link)
    await run("ip", "link", "set", link, "up")
    await run("ip", "-n", namespace, "addr", "replace", f"{inner}/30", "dev", UPLINK)
    await run("ip", "-n", namespace, "link", "set", UPLINK, "up")
    await run("ip", "-n", namespace, "route", "replace", "default", "via", outer)
    for subnet in subnets:
        # replace: a leftover route of an earlier run (or another group on the same subnet)
        # must not keep this machine from reaching the group that is being provisioned now.
        await run("ip", "route", "replace", subnet, "via", inner, "dev", link)
    await run("ip", "netns", "exec", namespace, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    await set_blocked(namespace, blocked)


async def remove(namespace: str) -> None:
    """Delete the group's uplink (both ends go together), if it is there."""
    link = root_link(namespace)
    if Path("/sys/class/net", link).exists():
        await run("ip", "link", "del", link, check=False)


async def set_blocked(namespace: str, blocked: bool) -> None:
    """Block (or open) the group's outbound connections, atomically (iptables-restore)."""
    await _restore(namespace, firewall_rules(blocked))


async def _restore(namespace: str, rules: str) -> None:
    code, _, err = await run("ip", "netns", "exec", namespace, "iptables-restore",
                             stdin=rules.encode(), check=False, timeout=30)
    if code != 0:
        raise ProviderError(f"iptables-restore in {namespace} exited {code}: "
                            f"{err.strip()[-300:]} (is iptables installed? "
                            "deploy/lab/build-images.sh installs it)")
