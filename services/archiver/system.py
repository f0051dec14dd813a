"""Which system a legacy host runs (shared/systems), read from its root when its root is
archived: the configurator writes the new VM's network and first-boot hook for that system, and a
system Ferryman cannot rebuild fails the VM here, before any VM of the group is created."""

from __future__ import annotations

import shlex

from services.archiver.archive import ArchiveError, LocalTree, TreeSource
from services.archiver.ssh import SshTree
from shared import proc
from shared.ssh import SSH_FAILED
from shared.systems import PROBE_SCRIPT, HostSystem, UnknownSystem, read_system

PROBE_TIMEOUT_S = 60


class SystemProbeError(ArchiveError):
    """The legacy root's system is unknown, or could not be read."""


async def read_host_system(tree: TreeSource) -> HostSystem:
    """The system of the root `tree` stands for."""
    if isinstance(tree, SshTree):
        argv = tree.ssh_argv("sh -c " + shlex.quote(PROBE_SCRIPT))
        where = f"legacy host {tree.host}"
    elif isinstance(tree, LocalTree):
        # The folder standing for "/": the probe reads $1's files ("" for "/" itself).
        argv = ["sh", "-c", PROBE_SCRIPT, "probe", str(tree.root).rstrip("/")]
        where = f"legacy root {tree.root}"
    else:
        raise SystemProbeError(f"cannot read the system of {tree}")
    try:
        done = await proc.run(argv, timeout=PROBE_TIMEOUT_S, check=False)
    except proc.CommandTimedOut:
        raise SystemProbeError(f"{where}: the system probe gave no answer in {PROBE_TIMEOUT_S} s") \
            from None
    if isinstance(tree, SshTree) and done.returncode == SSH_FAILED:
        raise SystemProbeError(tree.explain_ssh(proc.tail(done.stderr, 2000)))
    try:
        return read_system(done.stdout.decode(errors="replace"), where)
    except UnknownSystem as exc:
        raise SystemProbeError(str(exc)) from None
