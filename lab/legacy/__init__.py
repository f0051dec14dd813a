"""The example legacy site: six live legacy hosts, all with sshd, that the archiver reaches as
it would real ones, over SSH on a network: the shop's (app1 with nginx, db1 and db2 with
MariaDB, db1 with PostgreSQL too), made from the lab's base image, and the ledger's, each from
a system unlike it (old1: Debian 11 with sysvinit and nginx; net1: systemd-networkd and
MariaDB; plan1: netplan and MariaDB).

Each host is a root folder (its image, the base image unless site.yaml names another, plus
`examples/legacy/<host>/`) with its daemons chrooted into it, in its own network namespace on
10.213.0.0/24 (examples/legacy/site.yaml); this machine reaches them through one veth.
Namespaces rather than VMs: three more TCG VMs would cost minutes per run, and what the
archiver needs from a legacy host (a real sshd, MariaDB, PostgreSQL and nginx on a real
network, live files changing while they are read) a chroot in a namespace gives in seconds.

    site = await up(settings)        # idempotent; builds roots only when their inputs change
    await site.run("db1", "mariadb", "-N", "-e", "select count(*) from shop.orders")
    await down(settings)             # nothing left running, mounted or configured

`python -m lab.legacy up|down|status` does the same from a shell.
"""

from lab.legacy.site import (
    Completed, HostStatus, LegacyError, LegacyHost, Site, down, status, up,
)

__all__ = ["Completed", "HostStatus", "LegacyError", "LegacyHost", "Site", "down", "status",
           "up"]
