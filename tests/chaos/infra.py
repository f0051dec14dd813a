"""Private PostgreSQL and RabbitMQ instances for the chaos suite, which restarts them.

The machine's own PostgreSQL (5432) and RabbitMQ (5672) are shared with other people's test
runs, so they are never stopped here: the suite runs a PostgreSQL cluster of its own (initdb in
a temporary folder, its own port) and a RabbitMQ node of its own (its own node name, ports,
data, logs, cookie and no plugins), and restarts those. A restart stops the server and starts it
again on the same data folder, so what was durable (committed rows, quorum queues and their
persistent messages) is still there.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path


def installed_postgres(root: Path = Path("/usr/lib/postgresql")) -> Path | None:
    """The bin folder of the newest PostgreSQL server installed from Debian's packages
    (/usr/lib/postgresql/<major>/bin with an initdb), or None."""
    found = [(int(folder.name), folder / "bin") for folder in root.glob("*")
             if folder.name.isdigit() and (folder / "bin" / "initdb").exists()]
    return max(found)[1] if found else None


PG_BIN = installed_postgres()
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


class PrivatePostgres:
    """A PostgreSQL cluster (the installed server, PG_BIN) in `folder`, on `port`, trust authentication, loopback only.

    initdb refuses to run as root, so as root the cluster belongs to the `postgres` OS user
    and every pg_ctl call runs as that user (runuser)."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.port = port or free_port()
        self.restarts = 0
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = list(argv)
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.folder.chmod(0o755)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync", "--no-instructions")

    def start(self) -> None:
        # fsync off: a private test cluster on a shared disk. It changes nothing for a server
        # restart (even an immediate one), since the operating system keeps what was written.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1"
                   f" -c unix_socket_directories={self.folder} -c fsync=off"
                   " -c max_connections=200")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", "60", "-o", options, "start", timeout=90)
        _wait_port(self.port, 30, "PostgreSQL")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60",
                  "stop", timeout=90)

    def restart(self) -> None:
        """Stop at once (as a crash would: no checkpoint, recovery on start) and start again."""
        self.stop("immediate")
        self.start()
        self.restarts += 1

    def running(self) -> bool:
        try:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status", timeout=10)
            return True
        except subprocess.CalledProcessError:
            return False

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            try:
                self.stop("immediate")
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


class PrivateRabbit:
    """A RabbitMQ node of its own: node name `name@localhost`, its AMQP and distribution ports,
    its data (mnesia), logs, Erlang cookie (its HOME) and no plugins, all under `folder`."""

    def __init__(self, folder: Path, name: str, port: int | None = None,
                 dist_port: int | None = None):
        self.folder = folder
        self.node = f"{name}@localhost"
        self.port = port or free_port()
        self.dist_port = dist_port or free_port()
        self.pid_file = folder / "rabbit.pid"
        self.restarts = 0
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def env(self) -> dict[str, str]:
        f = self.folder
        return {
            **os.environ,
            "HOME": str(f),  # the node's and rabbitmqctl's Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(f / "mnesia"),
            "RABBITMQ_LOG_BASE": str(f / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(f / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(f / "rabbitmq.conf"),
            # Not the machine's /etc/rabbitmq/rabbitmq-env.conf (it names the machine's node).
            "RABBITMQ_CONF_ENV_FILE": str(f / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "enabled_plugins").write_text("[].\n")
        (self.folder / "rabbitmq-env.conf").write_text("")
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            # The disk is shared with other runs; do not block publishers over free space.
            "disk_free_limit.absolute = 50MB\n"
        )

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=True)

    def start(self) -> None:
        log = open(self.folder / "server.out", "ab")
        try:
            self._process = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")], env=self.env, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + 90
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited ({self._process.returncode}); see "
                                   f"{self.folder / 'server.out'}")
            try:
                self.ctl("await_startup", "--timeout", "30", timeout=40)
                break
            except subprocess.SubprocessError:
                # Until the node has registered with epmd, await_startup fails at once.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        _wait_port(self.port, 30, "RabbitMQ")

    def stop(self) -> None:
        # With the pid file, `stop` returns only once the Erlang VM has exited.
        self.ctl("stop", str(self.pid_file), timeout=90)
        if self._process:
            self._process.wait(30)

    def restart(self) -> None:
        started = time.monotonic()
        self.stop()
        self.last_stop_seconds = time.monotonic() - started
        self.start()
        self.restarts += 1

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Every queue: {name: {"ready": n, "unacked": n}} (quorum and classic alike)."""
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name", "messages_ready",
                       "messages_unacknowledged", timeout=60).stdout
        depths = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3:
                depths[parts[0]] = {"ready": int(parts[1]), "unacked": int(parts[2])}
        return depths

    def destroy(self) -> None:
        if self._process and self._process.poll() is None:
            try:
                self.stop()
            except subprocess.SubprocessError:
                pass
            if self._process.poll() is None:
                # The server script's own process group (start_new_session): ours only.
                try:
                    os.killpg(self._process.pid, 9)
                except ProcessLookupError:
                    pass
                self._process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)
