"""The site table (examples/legacy/site.yaml) and the names derived from it."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "legacy"
SITE_FILE = EXAMPLES / "site.yaml"

# Namespaces and links: fixed names, so one legacy site per machine, found by any `down`.
SITE_NAMESPACE = "ferry-legacy"        # the bridge between the hosts
HOST_NAMESPACE_PREFIX = "ferry-legacy-"  # + host name: one per host
UPLINK = "ferry-legacy"                # the root namespace's veth (its peer is "uplink")
BRIDGE = "br0"
DAEMONS = ("sshd", "mariadb", "postgresql", "nginx")
# The database servers a host's seeds may be loaded into (each a daemon of that host).
SEED_ENGINES = ("mariadb", "postgresql")
# The root images a host may be made from: what deploy/lab/build-images.sh puts in the images
# folder (settings.images_dir). The base image is what the new VMs boot too; the legacy ones
# differ from it (init system, network stack, Debian release).
BASE_IMAGE = "base-image.tar.zst"
IMAGES = {
    BASE_IMAGE: "Debian 12, systemd, ifupdown",
    "legacy-bullseye.tar.zst": "Debian 11, sysvinit, ifupdown",
    "legacy-bookworm-netplan.tar.zst": "Debian 12, systemd, netplan (networkd), no ifupdown",
    "legacy-bookworm-networkd.tar.zst": "Debian 12, systemd-networkd, no ifupdown",
}
# Interface names have at most 15 characters; the site's side of a host's veth is "lg-<host>".
_HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_INTERFACE = re.compile(r"^[a-z][a-z0-9]{0,14}$")
# A seeded database's name goes into SQL unquoted: plain lowercase words only.
_DATABASE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class SiteConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Seed:
    """A database loaded once into one of the host's servers, from an SQL file that makes its
    tables (and, for PostgreSQL, the roles that own them)."""
    engine: str  # the server: one of SEED_ENGINES, a daemon of the host
    database: str
    sql: Path


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: ipaddress.IPv4Address
    daemons: tuple[str, ...]
    assets: str | None = None  # where generated shared assets go (app1: /data)
    seeds: tuple[Seed, ...] = ()
    public_address: ipaddress.IPv4Address | None = None  # as the world knows the host
    image: str = BASE_IMAGE  # the root image it is made from (a name of IMAGES)
    interface: str = "eth0"  # its network interface, as its own network configuration names it

    @property
    def namespace(self) -> str:
        return HOST_NAMESPACE_PREFIX + self.name

    @property
    def site_link(self) -> str:
        return f"lg-{self.name}"

    @property
    def overlay(self) -> Path:
        return EXAMPLES / self.name


@dataclass(frozen=True)
class ZoneSpec:
    """The site's public DNS zone, served on this machine's loopback at `port`."""
    zone: str
    port: int
    ttl: int
    records: dict[str, ipaddress.IPv4Address]  # "@" is the apex


@dataclass(frozen=True)
class SiteSpec:
    network: ipaddress.IPv4Network
    uplink: ipaddress.IPv4Address
    hosts: dict[str, HostSpec]
    public: ipaddress.IPv4Network | None = None
    public_uplink: ipaddress.IPv4Address | None = None
    dns: ZoneSpec | None = None


def load_site(path: Path = SITE_FILE) -> SiteSpec:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        network = ipaddress.IPv4Network(data["network"])
        uplink = ipaddress.IPv4Address(data["uplink"])
        hosts = {name: _host(name, spec, path.parent) for name, spec in data["hosts"].items()}
        public = ipaddress.IPv4Network(data["public"]) if data.get("public") else None
        public_uplink = (ipaddress.IPv4Address(data["public_uplink"])
                         if data.get("public_uplink") else None)
        dns = _zone(data["dns"]) if data.get("dns") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise SiteConfigError(f"{path}: {exc}") from None
    publics = [h.public_address for h in hosts.values() if h.public_address]
    if publics and (public is None or public_uplink is None
                    or not all(a in public for a in [*publics, public_uplink])):
        raise SiteConfigError(f"{path}: public addresses need `public` (a network holding "
                              "them all) and `public_uplink` (this machine's, in it)")
    addresses = [h.address for h in hosts.values()] + [uplink]
    if len(set(addresses)) != len(addresses):
        raise SiteConfigError(f"{path}: two hosts (or a host and the uplink) share an address")
    outside = [str(a) for a in addresses if a not in network]
    if outside:
        raise SiteConfigError(f"{path}: {', '.join(outside)} not in {network}")
    return SiteSpec(network=network, uplink=uplink, hosts=hosts, public=public,
                    public_uplink=public_uplink, dns=dns)


def _zone(spec: dict) -> ZoneSpec:
    return ZoneSpec(zone=spec["zone"], port=int(spec["port"]), ttl=int(spec.get("ttl", 300)),
                    records={name: ipaddress.IPv4Address(a)
                             for name, a in spec["records"].items()})


def _host(name: str, spec: dict, folder: Path) -> HostSpec:
    if not _HOST_NAME.match(name):
        raise ValueError(f"host name {name!r}: lowercase letters and digits, at most 12")
    daemons = tuple(spec.get("daemons", ["sshd"]))
    unknown = set(daemons) - set(DAEMONS)
    if unknown:
        raise ValueError(f"host {name}: unknown daemons {sorted(unknown)}")
    image = spec.get("image", BASE_IMAGE)
    if not isinstance(image, str) or image not in IMAGES:
        raise ValueError(f"host {name}: unknown image {image!r} (the lab builds "
                         f"{', '.join(sorted(IMAGES))})")
    interface = spec.get("interface", "eth0")
    if not isinstance(interface, str) or not _INTERFACE.match(interface):
        raise ValueError(f"host {name}: interface {interface!r}: lowercase letters and digits, "
                         "at most 15")
    seeds = tuple(_seed(name, seed, daemons, folder) for seed in spec.get("seeds", []))
    return HostSpec(
        name=name, address=ipaddress.IPv4Address(spec["address"]), daemons=daemons,
        assets=spec.get("assets"), seeds=seeds,
        public_address=(ipaddress.IPv4Address(spec["public_address"])
                        if spec.get("public_address") else None),
        image=image, interface=interface,
    )


def _seed(host: str, spec: dict, daemons: tuple[str, ...], folder: Path) -> Seed:
    engine, database = spec.get("engine"), spec.get("database")
    if engine not in SEED_ENGINES:
        raise ValueError(f"host {host}: seed engine {engine!r}: one of "
                         f"{', '.join(SEED_ENGINES)}")
    if engine not in daemons:
        raise ValueError(f"host {host}: a {engine} seed, but {engine} is not among its daemons")
    if not isinstance(database, str) or not _DATABASE.match(database):
        raise ValueError(f"host {host}: seed database {database!r}: lowercase letters, digits "
                         "and '_', starting with a letter")
    return Seed(engine=engine, database=database, sql=folder / spec["sql"])
