"""The legacy network: a bridge in a "site" namespace, one namespace per host joined to it by a
veth, and one veth from the root namespace (where the archiver runs) into the site.

    root ns: ferry-legacy 10.213.0.254/24 ──veth── uplink ┐
                                                   br0 (ns ferry-legacy)
    ns ferry-legacy-app1: eth0 10.213.0.11/24 ──veth── lg-app1 ┘ ... lg-db1, lg-db2

A host's interface is eth0 unless site.yaml names another (`interface:`, as the host's own
network configuration does: ens3 for a systemd-networkd host, say).

Each host also has its public address (198.51.100.0/24) on the same eth0, and this machine its
own on the same veth, so the world (this machine) reaches the site at its public addresses. That
veth and its addresses (the routes come with them) are the only change in the root namespace;
deleting the site namespace takes the veth with it. The hosts' default route is this machine:
that is how a legacy host reaches the new VMs when the cutover forwards its public address to
them (and how the new VMs' answers come back). No NAT or firewall rule here: the cutover adds
the forwarding rules on the host itself, as it would on a real legacy host.
"""

from __future__ import annotations

import ipaddress
import subprocess

from lab.legacy import needed
from lab.legacy.config import BRIDGE, SITE_NAMESPACE, UPLINK, SiteSpec


class NetworkError(Exception):
    pass


def create(site: SiteSpec) -> None:
    _refuse_overlap(site.network)
    if site.public:
        _refuse_overlap(site.public)
    ip("netns", "add", SITE_NAMESPACE)
    ip("-n", SITE_NAMESPACE, "link", "set", "lo", "up")
    ip("-n", SITE_NAMESPACE, "link", "add", BRIDGE, "type", "bridge")
    ip("-n", SITE_NAMESPACE, "link", "set", BRIDGE, "up")
    prefix = site.network.prefixlen
    for host in site.hosts.values():
        ip("netns", "add", host.namespace)
        ip("-n", host.namespace, "link", "set", "lo", "up")
        ip("-n", SITE_NAMESPACE, "link", "add", host.site_link, "type", "veth",
           "peer", "name", host.interface, "netns", host.namespace)
        ip("-n", SITE_NAMESPACE, "link", "set", host.site_link, "master", BRIDGE, "up")
        ip("-n", host.namespace, "addr", "add", f"{host.address}/{prefix}", "dev",
           host.interface)
        if host.public_address:
            ip("-n", host.namespace, "addr", "add",
               f"{host.public_address}/{site.public.prefixlen}", "dev", host.interface)
        ip("-n", host.namespace, "link", "set", host.interface, "up")
        ip("-n", host.namespace, "route", "add", "default", "via", str(site.uplink))
    ip("link", "add", UPLINK, "type", "veth", "peer", "name", "uplink", "netns", SITE_NAMESPACE)
    ip("-n", SITE_NAMESPACE, "link", "set", "uplink", "master", BRIDGE, "up")
    ip("addr", "add", f"{site.uplink}/{prefix}", "dev", UPLINK)
    if site.public_uplink:
        ip("addr", "add", f"{site.public_uplink}/{site.public.prefixlen}", "dev", UPLINK)
    ip("link", "set", UPLINK, "up")


def delete(site: SiteSpec) -> None:
    """Remove the namespaces and the uplink; whatever of them exists (idempotent)."""
    existing = namespaces()
    for name in [h.namespace for h in site.hosts.values()] + [SITE_NAMESPACE]:
        if name in existing:
            ip("netns", "del", name)
    if link_exists(UPLINK):  # gone with its peer's namespace, unless that never existed
        ip("link", "del", UPLINK)


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def namespace_pids(name: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def uplink_address() -> str | None:
    out = subprocess.run(["ip", "-br", "-4", "addr", "show", "dev", UPLINK],
                         capture_output=True, text=True).stdout.split()
    return out[2].split("/")[0] if len(out) > 2 else None


def is_up(site: SiteSpec) -> bool:
    wanted = {SITE_NAMESPACE, *(h.namespace for h in site.hosts.values())}
    return wanted <= namespaces() and uplink_address() == str(site.uplink)


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _refuse_overlap(network: ipaddress.IPv4Network) -> None:
    """This machine must not already be on the legacy network (a real one, or a leftover),
    nor need an address in it for itself (its resolver, its gateway, its package sources)."""
    captured = needed.collisions(network, needed.needed())
    if captured:
        raise NetworkError(f"the lab's range {network} (examples/legacy/site.yaml) would "
                           f"capture what this machine needs: {'; '.join(captured)}. Choose "
                           "another range for the lab")
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                         text=True).stdout
    for line in out.split("\n"):
        fields = line.split()
        if len(fields) > 3 and fields[2] == "inet":
            address = ipaddress.IPv4Interface(fields[3])
            if address.network.overlaps(network):
                raise NetworkError(f"{fields[1]} already has {address}, which overlaps the "
                                   f"legacy network {network}")
