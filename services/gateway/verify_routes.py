"""`ferry verify`: how to reach each site at its new address before the cutover (hosts-file and
`curl --resolve` lines), and the plan's HTTP checks run against the new VMs from here."""

from __future__ import annotations

import shlex

from aiohttp import web

from services.gateway import models as m
from services.gateway.api import api
from services.gateway.errors import json_response, problem
from services.gateway.keys import DEPS
from shared.plan import Plan
from shared.site_checks import run_checks, site_name, targets


@api.route("GET", "/v1/groups/{group}/verify", "How to reach each site at its new address, and "
           "the plan's HTTP checks run against the new VMs", auth="operator",
           role="operator", tag="operator",
           response=m.Verification)
async def verify(request: web.Request) -> web.Response:
    ref = request.match_info["group"]
    async with request.app[DEPS].store.session() as db:
        group = await db.groups.find(ref)
    if group is None:
        raise problem(web.HTTPNotFound, f"no group {ref!r}")
    plan = group.parsed_plan()
    # The planned address is the new VM's: where the group's network puts it.
    addresses = {vm.name: str(vm.network.address.ip) for vm in plan.vms}
    results = await run_checks(plan, addresses)
    return json_response(m.Verification(
        group=plan.group, status=group.status, sites=_sites(plan, addresses),
        checks=[m.CheckView(vm=r.vm, url=r.url, address=r.address, ok=r.ok, detail=r.detail)
                for r in results],
        passed=all(r.ok for r in results)))


def _sites(plan: Plan, addresses: dict[str, str]) -> list[m.SiteView]:
    names: dict[str, list[str]] = {vm.name: [] for vm in plan.vms}
    dns = plan.cutover.dns
    for name, vm in (dns.records.items() if dns else ()):
        names[vm].append(name)
    for check in plan.cutover.checks:
        for vm in targets(plan, check):
            names[vm].append(site_name(plan, check, vm))
    sites = []
    for vm in plan.vms:
        found = list(dict.fromkeys([*names[vm.name], vm.network.hostname]))
        address = addresses[vm.name]
        sites.append(m.SiteView(
            vm=vm.name, address=address, names=found,
            hosts_line=f"{address} {' '.join(found)}",
            curl=[curl_line(name, address) for name in found]))
    return sites


def curl_line(name: str, address: str) -> str:
    """A `curl --resolve` line to paste. The names are hostnames (the plan checks them), but
    each argument is shell-quoted all the same: a line made for pasting must not depend on
    every value upstream having been checked."""
    argv = ["curl", "--resolve", f"{name}:80:{address}", f"http://{name}/"]
    return " ".join(shlex.quote(arg) for arg in argv)
