"""The lab refuses a range that would capture an address this machine needs for itself."""

import ipaddress

from lab.legacy import needed


def test_resolvers_and_apt_hosts_are_read_from_both_source_formats():
    assert needed.resolvers("# comment\nnameserver 10.255.255.53\nsearch lab\n") == ["10.255.255.53"]
    one_line = "deb http://deb.debian.org/debian bookworm main\n# deb http://old.example/x\n"
    deb822 = "Types: deb\nURIs: http://mirror.example:8080/debian\nSuites: bookworm\n"
    assert needed.apt_hosts([one_line, deb822]) == ["deb.debian.org", "old.example",
                                                    "mirror.example"]


def test_a_range_holding_a_package_source_is_named_with_the_reason():
    addresses = {"203.0.113.80": "deb.debian.org (a package source)",
                 "10.255.255.53": "a resolver in /etc/resolv.conf", "fe80::1%eth0": "gw"}
    assert needed.collisions(ipaddress.ip_network("203.0.113.0/24"), addresses) == [
        "203.0.113.80: deb.debian.org (a package source)"]
    assert needed.collisions(ipaddress.ip_network("198.51.100.0/24"), addresses) == []


def test_what_this_machine_needs_includes_its_resolver_and_its_sources(monkeypatch):
    seen = []
    monkeypatch.setattr(needed, "_read", lambda path: {
        "/etc/resolv.conf": "nameserver 10.9.9.9\n",
        "/etc/apt/sources.list": "deb http://apt.example/debian bookworm main\n"}.get(str(path), ""))
    monkeypatch.setattr(needed, "default_gateways", lambda: ["192.0.2.1"])
    found = needed.needed(lambda host: seen.append(host) or (["203.0.113.80"] if host == "apt.example" else []))
    assert found == {"10.9.9.9": "a resolver in /etc/resolv.conf", "192.0.2.1": "the default gateway",
                     "203.0.113.80": "apt.example (a package source)"}
    assert "pypi.org" in seen
