"""`ferry verify`'s lines are for a person to paste into a shell or /etc/hosts: each curl line
splits (as a shell would) into exactly the argv intended, and every name is a hostname."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from services.gateway.verify_routes import _sites, curl_line
from shared.plan import load_plan_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shop.yaml"
HOSTNAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$", re.I)


def test_the_example_plans_lines_are_hostnames_and_split_into_the_intended_argv():
    plan = load_plan_file(EXAMPLE)
    addresses = {vm.name: str(vm.network.address.ip) for vm in plan.vms}
    sites = _sites(plan, addresses)
    assert sites and all(site.curl for site in sites)
    for site in sites:
        address, *names = shlex.split(site.hosts_line)
        assert address == addresses[site.vm] and names == site.names
        assert all(HOSTNAME.match(name) for name in names), names
        for name, line in zip(site.names, site.curl, strict=True):
            assert shlex.split(line) == ["curl", "--resolve", f"{name}:80:{address}",
                                         f"http://{name}/"]


@pytest.mark.parametrize("name", ["a.example; rm -rf /", "$(x)", "`id`", "a b", "it's",
                                  "x\ny", "--output=/etc/passwd"])
def test_a_curl_line_stays_its_argv_whatever_the_name(name):
    """The plan refuses such names (test_plan); the line is quoted all the same."""
    assert shlex.split(curl_line(name, "10.0.0.9")) == [
        "curl", "--resolve", f"{name}:80:10.0.0.9", f"http://{name}/"]
