"""The plan's HTTP checks, run against the new VMs at their new addresses: what `ferry verify`
shows an operator and what the cutover requires before it moves DNS.

Each check goes to every app VM (or the one it names), to the VM's address, with the site's
name in the Host header, exactly as a visitor will once DNS points there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from shared.plan import HttpCheck, Plan, Role

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CheckResult:
    vm: str
    url: str  # as a visitor would write it: http://shop.example/
    address: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.vm} {self.url} at {self.address}: {'ok' if self.ok else 'FAILED'}, " \
               f"{self.detail}"


def targets(plan: Plan, check: HttpCheck) -> list[str]:
    """The VMs a check runs against: the one it names, or every app VM."""
    if check.vm:
        return [check.vm]
    return [vm.name for vm in plan.vms if vm.role == Role.APP]


def site_name(plan: Plan, check: HttpCheck, vm: str) -> str:
    return check.host or plan.vm(vm).network.hostname


async def run_checks(plan: Plan, addresses: dict[str, str]) -> list[CheckResult]:
    """Every check against every VM it targets; `addresses`: VM name → its new address."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        jobs = [_one(session, plan, check, vm, addresses.get(vm))
                for check in plan.cutover.checks for vm in targets(plan, check)]
        return list(await asyncio.gather(*jobs))


async def _one(session: aiohttp.ClientSession, plan: Plan, check: HttpCheck, vm: str,
               address: str | None) -> CheckResult:
    name = site_name(plan, check, vm)
    url = f"http://{name}{check.path}"
    if not address:
        return CheckResult(vm, url, "-", False, "the VM has no address this machine reaches")
    try:
        async with session.get(f"http://{address}{check.path}", headers={"Host": name},
                               allow_redirects=False) as response:
            body = await response.text(errors="replace")
            status = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return CheckResult(vm, url, address, False, f"no answer: {type(exc).__name__}: {exc}")
    if status != check.expect_status:
        return CheckResult(vm, url, address, False,
                           f"status {status}, expected {check.expect_status}")
    if check.contains is not None and check.contains not in body:
        return CheckResult(vm, url, address, False,
                           f"status {status}, but the body lacks {check.contains!r}")
    return CheckResult(vm, url, address, True, f"status {status}"
                       + (f", body has {check.contains!r}" if check.contains else ""))
