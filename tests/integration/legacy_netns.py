"""A legacy host for fault tests: a network namespace of its own, joined to this machine by one
veth pair on a /30 of 10.237.0.0/16, running a real sshd (this machine's, not chrooted: it
serves this machine's files, so a test's source folder is a path under its tmp_path).

Unlike lab/legacy it needs no lab image and no lab lock: each test makes its own namespace
(random names and subnet, checked against this machine's addresses and routes) and removes it
with every process it started there. Faults are the kernel's own: the host's link taken down,
its link rate shaped, its tar stopped.
"""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

NETWORK = ipaddress.ip_network("10.237.0.0/16")  # not in docs/lab.md's ranges
SSHD = "/usr/sbin/sshd"


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass
class LegacyHost:
    namespace: str
    link: str  # this machine's end of the veth
    address: str  # the host's
    key_file: Path  # the archiver's key, authorized on the host
    sshd: subprocess.Popen | None = field(default=None, repr=False)

    def ns(self, *argv: str) -> str:
        return run("ip", "netns", "exec", self.namespace, *argv)

    def pids(self) -> list[int]:
        return [int(p) for p in run("ip", "netns", "pids", self.namespace).split()]

    def processes(self, name: str) -> list[int]:
        """The host's processes running `name` (sshd's sessions are in the namespace too)."""
        found = []
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                    found.append(pid)
            except OSError:
                pass
        return found

    def received_here(self) -> int:
        """Bytes this machine has received from the host so far (its end of the veth)."""
        return int(Path(f"/sys/class/net/{self.link}/statistics/rx_bytes").read_text())

    def shape(self, rate: str) -> None:
        """The host's link sends at most `rate` (tc's words: "16mbit"), and its TCP sends
        little ahead: a stream takes seconds, and one that stops, stops at once."""
        self.ns("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate,
                "burst", "32kbit", "latency", "400ms")
        self.ns("sysctl", "-q", "-w", "net.ipv4.tcp_wmem=4096 16384 65536")

    def vanish(self) -> None:
        """The host drops off the network mid-stream (its link goes down): not a packet more,
        not a reset."""
        self.ns("ip", "link", "set", "eth0", "down")

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.address, 22), timeout=0.5):
                return True
        except OSError:
            return False


def free_subnet() -> ipaddress.IPv4Network:
    """A /30 of NETWORK that nothing on this machine has an address or a route in."""
    used = [ipaddress.ip_network(word, strict=False)
            for line in run("ip", "-4", "-o", "addr", "show").splitlines()
            for word in line.split() if "/" in word and word[0].isdigit()]
    for line in run("ip", "-4", "route", "show", "table", "all").splitlines():
        first = line.split()[0] if line.split() else ""
        if first[:1].isdigit():
            used.append(ipaddress.ip_network(first if "/" in first else f"{first}/32",
                                             strict=False))
    subnets = list(NETWORK.subnets(new_prefix=30))
    for subnet in random.sample(subnets, 64):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"no free /30 in {NETWORK}")


def start(folder: Path, prefix: str = "fa") -> LegacyHost:
    """Make the namespace, its link and its sshd; `folder` holds keys and configuration.
    `prefix` (two letters) starts the names of the namespace (`ferry-<prefix>-...`) and link."""
    namespace, link, here, there = joined_namespace(prefix)
    try:
        host = LegacyHost(namespace, link, there, folder / "id_ed25519")
        host.sshd = _start_sshd(host, folder)
    except BaseException:
        stop_namespace(namespace, link)
        raise
    return host


def joined_namespace(prefix: str) -> tuple[str, str, str, str]:
    """A new namespace joined to this machine by a veth on a free /30: (namespace, this
    machine's link, this machine's address, the namespace's address on its eth0)."""
    tag = uuid.uuid4().hex[:8]
    namespace, link = f"ferry-{prefix}-{tag}", f"{prefix}{tag}"
    subnet = free_subnet()
    here, there = (str(a) for a in list(subnet.hosts())[:2])
    run("ip", "netns", "add", namespace)
    try:
        run("ip", "-n", namespace, "link", "set", "lo", "up")
        run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns",
            namespace)
        run("ip", "addr", "add", f"{here}/30", "dev", link)
        run("ip", "link", "set", link, "up")
        run("ip", "-n", namespace, "addr", "add", f"{there}/30", "dev", "eth0")
        run("ip", "-n", namespace, "link", "set", "eth0", "up")
    except BaseException:
        stop_namespace(namespace, link)
        raise
    return namespace, link, here, there


def _start_sshd(host: LegacyHost, folder: Path) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.key_file))
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key"))
    (folder / "authorized_keys").write_text(Path(f"{host.key_file}.pub").read_text())
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress {host.address}", "Port 22", f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "UsePAM no", "StrictModes no", "PidFile none",
        "LogLevel ERROR", ""]))
    return _spawn_sshd(host, folder)


def _spawn_sshd(host: LegacyHost, folder: Path) -> subprocess.Popen:
    config = folder / "sshd_config"
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    with (folder / "sshd.log").open("ab") as log:
        # `ip netns exec` execs sshd: this process is sshd itself.
        return subprocess.Popen(["ip", "netns", "exec", host.namespace, SSHD, "-D", "-e", "-f",
                          str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)


def host_key(folder: Path) -> str:
    """The public host key the host's sshd presents (`TYPE BASE64 COMMENT`)."""
    return (folder / "host_key.pub").read_text().strip()


def replace_host_key(host: LegacyHost, folder: Path) -> None:
    """The host rebuilt, or another machine at its address: its sshd restarted with a new
    host key (and the same authorized key)."""
    if host.sshd is not None:
        host.sshd.terminate()
        host.sshd.wait(timeout=10)
    for old in (folder / "host_key", folder / "host_key.pub"):
        old.unlink()
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key"))
    host.sshd = _spawn_sshd(host, folder)


def stop(host: LegacyHost) -> None:
    stop_namespace(host.namespace, host.link)
    if host.sshd is not None:
        host.sshd.wait(timeout=10)


def stop_namespace(namespace: str, link: str) -> None:
    """Kill what runs in the namespace (only what this test started there), then remove it;
    its veth goes with it."""
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    for pid in (int(p) for p in done.stdout.split()):
        for sig in (signal.SIGCONT, signal.SIGKILL):  # a stopped tar must die too
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    subprocess.run(["ip", "link", "del", link], capture_output=True)
