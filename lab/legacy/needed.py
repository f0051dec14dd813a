"""The addresses this machine needs for itself, which a lab range must never capture.

The lab routes its ranges from this machine's own namespace; a range that holds the resolver,
the default gateway or the package sources' servers would take their traffic (seen: the lab's
public range once held the package mirror's address, and apt failed while the lab ran). So
before it claims a range the lab asks what the machine talks to and refuses a collision.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Where packages come from when nothing overrides them (pip's and npm's defaults).
DEFAULT_SOURCES = ("pypi.org", "files.pythonhosted.org", "registry.npmjs.org")


def resolvers(resolv_conf: str) -> list[str]:
    return [fields[1] for fields in (line.split() for line in resolv_conf.splitlines())
            if len(fields) >= 2 and fields[0] == "nameserver"]


def apt_hosts(sources: Iterable[str]) -> list[str]:
    """Host names of the apt sources' URIs, one-line (`deb http://...`) and deb822 (`URIs:`)."""
    hosts = []
    for text in sources:
        for url in re.findall(r"\b(?:https?|ftp)://[^\s\]]+", text):
            if (host := urlsplit(url).hostname) is not None:
                hosts.append(host)
    return hosts


def default_gateways() -> list[str]:
    out = subprocess.run(["ip", "route", "show", "default"], capture_output=True,
                         text=True).stdout
    return re.findall(r"\bvia (\S+)", out)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def source_hosts() -> list[str]:
    apt = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    overrides = [os.environ.get(name, "") for name in ("PIP_INDEX_URL", "npm_config_registry")]
    return [*apt_hosts(_read(p) for p in apt), *apt_hosts(overrides), *DEFAULT_SOURCES]


def _addresses_of(host: str) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    except OSError:
        return []  # a source that does not resolve cannot be captured by a route either


def needed(resolve: Callable[[str], list[str]] = _addresses_of) -> dict[str, str]:
    """Each address the machine needs, with why: {"203.0.113.80": "deb.debian.org (a package
    source)", ...}."""
    found = {a: "a resolver in /etc/resolv.conf" for a in resolvers(_read(Path("/etc/resolv.conf")))}
    found.update({a: "the default gateway" for a in default_gateways()})
    for host in dict.fromkeys(source_hosts()):
        for address in resolve(host):
            found.setdefault(address, f"{host} (a package source)")
    return found


def collisions(network: ipaddress.IPv4Network | ipaddress.IPv6Network,
               addresses: dict[str, str]) -> list[str]:
    """What of `addresses` the range would capture, as "ADDRESS: WHY"."""
    hits = []
    for text, why in addresses.items():
        try:
            address: Address = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if address.version == network.version and address in network:
            hits.append(f"{address}: {why}")
    return hits
