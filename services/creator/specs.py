"""What the creator asks the provider for: a VM's spec from its plan entry, and the
idempotency key its creation carries."""

from __future__ import annotations

from shared.model import Vm
from shared.plan import Plan
from shared.providers.base import VmSpec


def vm_spec(plan: Plan, vm: Vm) -> VmSpec:
    planned = plan.vm(vm.name)
    return VmSpec(
        vm_id=vm.id, group=plan.group, name=vm.name, role=vm.role, cpus=planned.cpus,
        memory_mb=planned.memory_mb, disks_gb=[d.size_gb for d in planned.disks],
        disk_buses=[d.bus for d in planned.disks],
        address=str(planned.network.address),
        gateway=str(planned.network.gateway) if planned.network.gateway else None,
    )


def vm_key(vm: Vm) -> str:
    return f"vm:{vm.id}"
