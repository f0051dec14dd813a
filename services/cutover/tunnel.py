"""The hand-off's SSH tunnel: the legacy master opens it to the new one (`ssh -R`), because the
new VMs may not reach out before the cutover, but they may be reached. It carries the new
master's 127.0.0.1:<port> to the legacy server's own port on the legacy host's 127.0.0.1.

Its key is the legacy host's own (made there, never leaving it), and the new master lets that
key do nothing but this one forward. The tunnel runs on the legacy host in a loop of its own (a
pid file in its folder), so it outlives the run that opened it, the cutover service and a
dropped connection, until the window closes it. One tunnel per engine family: a master may hold
MariaDB and PostgreSQL, each handed off through its own.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Sequence

from shared.host_keys import HostKey, known_hosts_lines
from shared.ssh import Remote, RemoteError

LINK_UP_S = 60


class TunnelError(Exception):
    """The tunnel did not come up; says between which machines and why."""


@dataclass(frozen=True)
class Tunnel:
    port: int  # on the new master's loopback: the legacy server, through the tunnel
    folder: str  # on the legacy host: its key, known_hosts, pid and log
    mark: str  # the key's comment in the new master's authorized_keys

    def key_script(self) -> str:
        return (f"mkdir -p {self.folder}\n"
                f"chmod 700 {self.folder}\n"
                f"test -f {self.folder}/key || ssh-keygen -q -t ed25519 -N '' "
                f"-C {self.mark} -f {self.folder}/key\n"
                f"cut -d' ' -f1,2 {self.folder}/key.pub\n")

    def stop_script(self) -> str:
        return (f"if [ -f {self.folder}/pid ]; then\n"
                f"    kill -TERM -- \"-$(cat {self.folder}/pid)\" 2>/dev/null || true\n"
                f"    rm -f {self.folder}/pid\n"
                "fi\n")

    def forget_key_script(self) -> str:
        return (f"sed -i '/ {self.mark}$/d' /root/.ssh/authorized_keys 2>/dev/null || true")

    def allow_key_script(self, public: str) -> str:
        entry = (f'restrict,port-forwarding,permitlisten="127.0.0.1:{self.port}",'
                 f'command="/bin/false" {public} {self.mark}')
        return (f"mkdir -p /root/.ssh && chmod 700 /root/.ssh && "
                f"touch /root/.ssh/authorized_keys && "
                f"sed -i '/ {self.mark}$/d' /root/.ssh/authorized_keys && "
                f"printf '%s\\n' {shlex.quote(entry)} >> /root/.ssh/authorized_keys")

    def start_script(self, new_address: str, server_port: int,
                     pinned: Sequence[HostKey] = ()) -> str:
        """Restart the loop that keeps `ssh -R` up. Its known_hosts is written afresh: the new
        master's `pinned` keys, as it reported them, and no other accepted; without any (a
        caller that knows none), it starts empty and is held to the first key for this loop's
        life."""
        checking = "yes" if pinned else "accept-new"
        known = "".join(f"{line}\n" for line in known_hosts_lines(new_address, 22, list(pinned)))
        ssh = shlex.join([
            "ssh", "-N", "-i", f"{self.folder}/key", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "ExitOnForwardFailure=yes",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
            "-o", f"StrictHostKeyChecking={checking}",
            "-o", f"UserKnownHostsFile={self.folder}/known_hosts",
            "-R", f"127.0.0.1:{self.port}:127.0.0.1:{server_port}", f"root@{new_address}"])
        loop = f"echo $$ > {self.folder}/pid; while :; do {ssh}; sleep 2; done"
        return self.stop_script() + (
            f"printf %s {shlex.quote(known)} > {self.folder}/known_hosts\n"
            f"setsid nohup bash -c {shlex.quote(loop)} > {self.folder}/log 2>&1 < /dev/null &\n"
            f"for _ in $(seq 1 50); do test -s {self.folder}/pid && exit 0; sleep 0.1; done\n"
            "echo 'the tunnel loop did not start' >&2; exit 1\n")

    async def open(self, legacy: Remote, new: Remote, new_address: str,
                   server_port: int) -> None:
        """The legacy master's key allowed on the new master for this forward only, and the
        tunnel's loop running on the legacy host; then wait until the forward answers."""
        public = (await legacy.run(self.key_script(), what="making the tunnel's key")).strip()
        if not public.startswith("ssh-"):
            raise TunnelError(f"{legacy.label} gave no public key for the tunnel: {public!r}")
        await new.run(self.allow_key_script(public), what="allowing the tunnel's key")
        await legacy.run(self.start_script(new_address, server_port, new.pinned),
                         what="starting the tunnel")
        probe = (f"for _ in $(seq 1 {LINK_UP_S}); do "
                 f"if (exec 3<>/dev/tcp/127.0.0.1/{self.port}) 2>/dev/null; then exit 0; fi; "
                 "sleep 1; done; exit 1")
        try:
            await new.run(probe, what="waiting for the tunnel", timeout=LINK_UP_S + 30)
        except RemoteError:
            log = await legacy.run(f"tail -n 5 {self.folder}/log 2>/dev/null || true",
                                   what="reading the tunnel's log")
            raise TunnelError(f"the tunnel from {legacy.label} to {new.label} did not come up "
                              f"within {LINK_UP_S}s: {log.strip()[-300:]}") from None

    async def close(self, legacy: Remote, new: Remote) -> None:
        await legacy.run(self.stop_script(), what="closing the tunnel")
        await new.run(self.forget_key_script(), what="removing the tunnel's key")


# MariaDB and MySQL: the folder and mark the first hand-offs used, kept so a tunnel opened by
# an earlier version of Ferryman is still found and closed.
MYSQL = Tunnel(port=3307, folder="/var/lib/ferryman/tunnel", mark="ferry-handoff")
POSTGRESQL = Tunnel(port=5433, folder="/var/lib/ferryman/tunnel-postgresql",
                    mark="ferry-handoff-postgresql")
TUNNELS = {"mysql": MYSQL, "postgresql": POSTGRESQL}
