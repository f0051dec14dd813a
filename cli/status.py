"""`ferry status`: the groups, or one group's VMs, as a table."""

from __future__ import annotations

from rich.table import Table

STATE_STYLE = {
    "failed": "bold red", "halted": "yellow", "ready": "green", "live": "bold green",
}


def groups_table(groups: list[dict]) -> Table:
    table = Table(title="Groups")
    for column in ("group", "status", "VMs", "states", "since"):
        table.add_column(column)
    for g in groups:
        states = ", ".join(f"{k}={v}" for k, v in sorted(g["states"].items()))
        table.add_row(g["name"], _styled(g["status"]), str(g["vm_count"]), states,
                      g["created_at"][:19])
    return table


def group_table(group: dict) -> Table:
    title = f"{group['name']}  [{group['status']}]"
    if group.get("halted_reason"):
        title += f"\nHALTED: {group['halted_reason']}"
    table = Table(title=title)
    for column in ("VM", "role", "state", "step", "in state", "message"):
        table.add_column(column)
    for vm in group["vms"]:
        state = vm["state"] + (f" (at {vm['held_state']})" if vm.get("held_state") else "")
        table.add_row(vm["name"], vm["role"], _styled(vm["state"], state), vm.get("step") or "",
                      f"{vm['seconds_in_state']:.0f}s", (vm.get("message") or "")[:60])
    return table


def _styled(state: str, text: str | None = None) -> str:
    style = STATE_STYLE.get(state)
    text = text or state
    return f"[{style}]{text}[/{style}]" if style else text
