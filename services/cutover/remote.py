"""Commands on the group's machines, old and new, over SSH: what the runbook's steps do there.

The same OpenSSH client and options as the archiver (services/archiver/ssh.py says why not
asyncssh). A command is a bash script run with errexit and pipefail; its failure comes back as a
RemoteError naming the machine and the last lines of its stderr. Data (a database dump) goes
from one machine's stdout into another's stdin through this machine, in one pipe, never
through Python objects.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.archiver.ssh import SSH_FAILED, SshTree

TIMEOUT_S = 300.0


class RemoteError(Exception):
    """A command on a machine failed; the message says which machine, what, and why."""


@dataclass(frozen=True)
class Remote:
    """One machine: `label` says which in messages ("legacy app1", "new app1")."""

    label: str
    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    # One SSH connection per machine for the whole run, shared by every command and rsync
    # (ControlMaster): a handshake with a VM under emulation costs a second or more, and the
    # window has a dozen of them.
    control_dir: Path | None = None

    def argv(self, script: str) -> list[str]:
        command = shlex.join(["bash", "-o", "errexit", "-o", "nounset", "-o", "pipefail",
                              "-c", script])
        tree = SshTree(host=self.host, port=self.port, user=self.user, key_file=self.key_file,
                       known_hosts=self.known_hosts)
        argv = tree.ssh_argv(command)
        return [argv[0], *self._sharing(), *argv[1:]]

    def _sharing(self) -> list[str]:
        if self.control_dir is None:
            return []
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
                "-o", "ControlPersist=300"]

    async def close(self) -> None:
        """End the shared connection, if there is one (harmless if there is none)."""
        if self.control_dir is None:
            return
        proc = await asyncio.create_subprocess_exec(
            "ssh", *self._sharing(), "-O", "exit", "-p", str(self.port), "-l", self.user,
            "--", self.host, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        await proc.wait()

    def ssh_command(self) -> str:
        """The `ssh` command line rsync's -e uses to reach this machine (its options only)."""
        argv = self.argv("")
        return shlex.join(argv[:argv.index("--")])

    async def run(self, script: str, *, what: str, timeout: float = TIMEOUT_S,
                  stdin: bytes | None = None) -> str:
        """Run `script`, with `stdin` as its input (SQL holding a password: never an argv);
        its stdout, or RemoteError."""
        proc = await asyncio.create_subprocess_exec(
            *self.argv(script), stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise RemoteError(f"{what} on {self.label} did not finish in {timeout:.0f}s") from None
        if proc.returncode != 0:
            raise RemoteError(self.explain(what, proc.returncode, err))
        return out.decode(errors="replace")

    def explain(self, what: str, code: int, stderr: bytes) -> str:
        tail = stderr.decode(errors="replace").strip()[-400:]
        if code == SSH_FAILED:
            return f"{what}: cannot reach {self.label} ({self.host}) over SSH: {tail}"
        return f"{what} on {self.label} exited {code}" + (f": {tail}" if tail else "")


async def pipe(source: Remote, produce: str, sink: Remote, consume: str, *, what: str,
               source_input: bytes | None = None, timeout: float = TIMEOUT_S) -> None:
    """`produce` on one machine, its stdout into `consume` on another; both must succeed.
    `source_input` goes to `produce`'s stdin (a password: never in an argv)."""
    read_end, write_end = os.pipe()
    try:
        first = await asyncio.create_subprocess_exec(
            *source.argv(produce), stdout=write_end, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL if source_input is None else subprocess.PIPE)
        second = await asyncio.create_subprocess_exec(
            *sink.argv(consume), stdin=read_end, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
    finally:
        os.close(read_end)
        os.close(write_end)
    try:
        (_, err1), (_, err2) = await asyncio.wait_for(
            asyncio.gather(first.communicate(source_input), second.communicate()), timeout)
    except asyncio.TimeoutError:
        for proc in (first, second):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        raise RemoteError(f"{what} did not finish in {timeout:.0f}s") from None
    if first.returncode != 0:
        raise RemoteError(source.explain(what, first.returncode, err1))
    if second.returncode != 0:
        raise RemoteError(sink.explain(what, second.returncode, err2))
