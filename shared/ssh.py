"""SSH to the machines of a migration, legacy and new: the `ssh` command line, the wording of
its failures, a shared connection per machine, and `Remote`, a machine that runs bash scripts.

Why OpenSSH's `ssh` client and not asyncssh (which design.md names), on purpose: an archive is
a process pipeline, `tar | zstd > file`, with no Python in the data path but the hashing of
zstd's output. Over SSH it stays one: `ssh host 'tar ...' | zstd > file`, run by the same code
as a local archive, with the same back-pressure, cancellation, atomic publication and
exit-status handling; a database dump moves from one machine to another the same way. asyncssh
would put every byte through Python objects and our own flow control. OpenSSH also brings what
operators already rely on (their ssh_config's ProxyJump and ciphers, the known_hosts format,
`ssh-keygen -R`) and is on every machine. The price is that failures come as exit status 255
and a line of text, which `SshHost.explain_ssh` turns into "unreachable", "key refused" or
"host key changed".

Secrets never go into argv (world-readable in `ps` on both machines): they travel on ssh's
stdin.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from shared import proc
from shared.host_keys import HostKey, fingerprints, parse_keys, write_known_hosts

SSH = "ssh"
CONNECT_TIMEOUT_S = 15
SERVER_ALIVE_INTERVAL_S = 15
SERVER_ALIVE_COUNT_MAX = 3  # ssh's own default, named so the wording below can count with it
CLOSE_TIMEOUT_S = 30.0
TIMEOUT_S = 300.0  # a command on a Remote, unless its caller says otherwise
# ssh's own failures (cannot connect, authentication, host key) exit 255; anything else is the
# remote command's exit status, passed through.
SSH_FAILED = 255

_UNREACHABLE = ("Connection timed out", "No route to host", "Connection refused",
                "Network is unreachable", "Could not resolve hostname",
                "Name or service not known", "Temporary failure in name resolution",
                "Connection closed by", "Connection reset by")
# ConnectTimeout also bounds the banner exchange; ServerAliveCountMax keepalives unanswered.
_BANNER_TIMEOUT = "timed out during banner exchange"
_NOT_RESPONDING = "not responding"
_KNOWN_HOST_ADDED = "Permanently added"  # at LogLevel=INFO, on a first contact: no failure
_KEY_REFUSED = ("Permission denied", "Too many authentication failures", "Load key")
_HOST_KEY = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
             "host key for", "No ED25519 host key is known", "host key is known for")


class RemoteError(Exception):
    """A command on a machine failed; the message says which machine, what, and why."""


@dataclass(frozen=True)
class SshHost:
    """A host reached as `user` with only `key_file`, its host key checked against
    `known_hosts` (a new host's key is accepted and recorded, a changed one refused)."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    # One SSH connection per machine, shared by every command and rsync (ControlMaster): a
    # handshake with a VM under emulation costs a second or more, and a cutover's window has a
    # dozen of them. None: every command connects on its own.
    control_dir: Path | None = None
    # How long to wait for the connection and the banner, and how a host that stops answering
    # mid-stream is noticed: this many keepalives this far apart unanswered (Settings.ssh_*).
    connect_timeout_s: int = CONNECT_TIMEOUT_S
    alive_interval_s: int = SERVER_ALIVE_INTERVAL_S
    alive_count_max: int = SERVER_ALIVE_COUNT_MAX
    # True: only a key already in known_hosts is accepted (StrictHostKeyChecking=yes): a new
    # VM's reported keys, or a legacy host's from the plan (source.host_keys), are pinned
    # there. False: trust on first use, then held to that key (accept-new): the other legacy
    # hosts, whose keys the archiver records.
    strict: bool = False
    # ERROR: no "Permanently added ... to the list of known hosts" in the stderr we report.
    # INFO also keeps "Timeout, server ... not responding." (keepalives unanswered), which
    # ssh logs at that level: a long stream's caller wants it (explain_ssh drops the other).
    log_level: str = "ERROR"

    def ssh_argv(self, remote_command: str) -> list[str]:
        """`ssh ... -- host 'remote_command'`; the remote login shell runs the command."""
        return [
            SSH,
            *self._sharing(),
            "-T",  # no terminal: a clean binary stream, and no escape character
            "-o", "BatchMode=yes",  # never prompt (for a password or a passphrase)
            "-o", f"StrictHostKeyChecking={'yes' if self.strict else 'accept-new'}",
            "-o", f"UserKnownHostsFile={_config_path(self.known_hosts)}",
            "-o", f"ConnectTimeout={self.connect_timeout_s}",
            "-o", f"ServerAliveInterval={self.alive_interval_s}",
            "-o", f"ServerAliveCountMax={self.alive_count_max}",
            # Only this key: not whatever an agent offers first (a wrong key would read as
            # "refused" after several tries, or lock the account on fail2ban'd hosts).
            "-o", "IdentitiesOnly=yes",
            "-o", f"IdentityFile={_config_path(self.key_file)}",
            "-o", f"LogLevel={self.log_level}",
            "-p", str(self.port), "-l", self.user,
            # "--": a host named "-oProxyCommand=..." is a host name, not an option.
            "--", self.host, remote_command,
        ]

    def ssh_command(self) -> str:
        """The `ssh` command line rsync's -e uses to reach this host (its options only)."""
        argv = self.ssh_argv("")
        return shlex.join(argv[:argv.index("--")])

    def _sharing(self) -> list[str]:
        if self.control_dir is None:
            return []
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
                "-o", "ControlPersist=300"]

    async def close(self) -> None:
        """End the shared connection, if there is one (harmless if there is none)."""
        if self.control_dir is None:
            return
        try:
            await proc.run([SSH, *self._sharing(), "-O", "exit", "-p", str(self.port),
                            "-l", self.user, "--", self.host],
                           timeout=CLOSE_TIMEOUT_S, check=False)
        except proc.CommandTimedOut:
            pass  # the master goes by itself after ControlPersist's 300 s of idleness

    def explain_ssh(self, tail: str) -> str:
        """ssh's own failure (exit 255), by cause."""
        where = f"{self.host} port {self.port}"
        tail = without_notices(tail)
        if any(mark in tail for mark in _HOST_KEY):
            # ssh's banner of @ lines says it at length; its last two lines say it enough.
            brief = " ".join(tail.splitlines()[-2:])
            if self.strict:  # the archiver's only strict hosts: keys from the plan
                return (f"the SSH host key of {where} is not one of those the plan gives for it "
                        f"(source.host_keys, pinned in {self.known_hosts}): another machine at "
                        f"its address, or the host rebuilt; check its keys and correct the "
                        f"plan: {brief}")
            return (f"the SSH host key of {where} is not the one recorded in {self.known_hosts}"
                    f" (a rebuilt host, or another machine at its address; if the change is"
                    f" expected: ssh-keygen -R {_known_hosts_name(self.host, self.port)} -f"
                    f" {self.known_hosts}): {brief}")
        if any(mark in tail for mark in _KEY_REFUSED):
            return f"{where} refused the SSH key {self.key_file} for user {self.user}: {tail}"
        if _BANNER_TIMEOUT in tail:
            return (f"{where} accepted the connection but sent no SSH banner within "
                    f"{self.connect_timeout_s} s (not an SSH server, or one that hangs): {tail}")
        if _NOT_RESPONDING in tail:
            return (f"{where} stopped answering ({self.alive_count_max} SSH keepalives "
                    f"{self.alive_interval_s} s apart went unanswered): {tail}")
        if any(mark in tail for mark in _UNREACHABLE):
            return f"cannot reach {where} over SSH: {tail}"
        return f"SSH to {self.user}@{where} failed: {tail or 'no message'}"


@dataclass(frozen=True)
class Remote:
    """One machine that runs bash scripts over SSH: `label` says which in messages
    ("legacy app1", "new app1").

    A script runs with errexit, nounset and pipefail; its failure comes back as a RemoteError
    naming the machine and the last lines of its stderr."""

    label: str
    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    control_dir: Path | None = None  # SshHost.control_dir: one shared connection
    # The keys `known_hosts` pins for this machine (a new VM's, as it reported them): ssh
    # accepts no other (StrictHostKeyChecking=yes), and a refusal names them. Empty: trust on
    # first use (a legacy host).
    pinned: tuple[HostKey, ...] = ()
    pinned_from: str = "the one it reported"  # where the pinned keys came from, for a refusal

    @property
    def ssh(self) -> SshHost:
        return SshHost(self.host, self.port, self.user, self.key_file, self.known_hosts,
                       self.control_dir, strict=bool(self.pinned))

    def argv(self, script: str) -> list[str]:
        return self.ssh.ssh_argv(shlex.join(["bash", "-o", "errexit", "-o", "nounset",
                                             "-o", "pipefail", "-c", script]))

    def ssh_command(self) -> str:
        """The `ssh` command line rsync's -e uses to reach this machine (its options only)."""
        return self.ssh.ssh_command()

    async def close(self) -> None:
        """End the shared connection, if there is one (harmless if there is none)."""
        await self.ssh.close()

    async def run(self, script: str, *, what: str, timeout: float = TIMEOUT_S,
                  stdin: bytes | None = None) -> str:
        """Run `script`, with `stdin` as its input (SQL holding a password: never an argv);
        its stdout, or RemoteError."""
        try:
            done = await proc.run(self.argv(script), timeout=timeout, stdin=stdin, what=what)
        except proc.CommandTimedOut:
            raise RemoteError(f"{what} on {self.label} did not finish in {timeout:.0f}s") from None
        except proc.CommandFailed as exc:
            raise RemoteError(self.explain(what, exc.returncode, exc.stderr)) from None
        return done.stdout.decode(errors="replace")

    def explain(self, what: str, code: int, stderr: bytes) -> str:
        tail = proc.tail(stderr, 400)
        if code == SSH_FAILED and self.pinned and any(mark in tail for mark in _HOST_KEY):
            return f"{what}: {self.refused_host_key(proc.tail(stderr, 4000))}"
        if code == SSH_FAILED:
            return f"{what}: cannot reach {self.label} ({self.host}) over SSH: {tail}"
        return f"{what} on {self.label} exited {code}" + (f": {tail}" if tail else "")


    def refused_host_key(self, stderr: str) -> str:
        """ssh refused the machine at this address: it presented a key other than the pinned."""
        offered = sorted(set(re.findall(r"SHA256:[A-Za-z0-9+/]{43}", stderr)))
        return (f"{self.label} at {self.host} port {self.port} presented an SSH host key other "
                f"than {self.pinned_from} (pinned: {fingerprints(list(self.pinned))}; "
                f"presented: {', '.join(offered) or 'a key of a type not pinned'}): another "
                f"machine at its address, or the machine rebuilt since its keys were pinned; "
                "refused")


async def pipe(source: Remote, produce: str, sink: Remote, consume: str, *, what: str,
               source_input: bytes | None = None, timeout: float = TIMEOUT_S) -> None:
    """`produce` on one machine, its stdout into `consume` on another, through this machine in
    one OS pipe (never through Python objects); both must succeed. `source_input` goes to
    `produce`'s stdin (a password: never in an argv)."""
    try:
        first, second = await proc.pipe(source.argv(produce), sink.argv(consume),
                                        timeout=timeout, stdin=source_input, what=what,
                                        check=False)
    except proc.CommandTimedOut:
        raise RemoteError(f"{what} did not finish in {timeout:.0f}s") from None
    if first.returncode != 0:
        raise RemoteError(source.explain(what, first.returncode, first.stderr))
    if second.returncode != 0:
        raise RemoteError(sink.explain(what, second.returncode, second.stderr))


def plan_known_hosts(recorded: Path, host: str, port: int, lines: list[str]) -> Path:
    """The known_hosts of a legacy host whose keys the plan gives (`source.host_keys`), beside
    the recorded one (`recorded`, the archiver's): those keys only, written afresh each time,
    so that a corrected plan takes effect at once. Its path."""
    tag = hashlib.sha256(f"{host}\0{port}".encode()).hexdigest()[:16]
    path = recorded.parent / "pinned" / f"known_hosts-{tag}"
    write_known_hosts(path, {(host, port): parse_keys(lines)})
    return path


def without_notices(stderr: str) -> str:
    """ssh's stderr without what it says at LogLevel=INFO on a success (a first contact's
    "Permanently added ... to the list of known hosts"): what is left is worth reporting."""
    return "\n".join(line for line in stderr.splitlines()
                     if _KNOWN_HOST_ADDED not in line).strip()


def _config_path(path: Path) -> str:
    """A path as an ssh -o value: ssh expands "%x" tokens and splits on blanks there."""
    text = os.fspath(path).replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"
