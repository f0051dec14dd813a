"""Settings from the environment (FERRY_*), with defaults for this machine's local services."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.states import DEADLINE_PHASES


# The smallest pool a process works with (database_pool_max).
MIN_POOL = 3


def _state_dir() -> Path:
    return Path.home() / ".local" / "state" / "ferryman"


def _lab_cache() -> Path:
    return Path.home() / ".cache" / "ferryman" / "lab"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRY_", frozen=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    # Schema holding Ferryman's tables; tests give each run its own so runs never meet.
    database_schema: str = "ferry"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Prefix of every exchange and queue name: "ferry" gives ferry.events, ferry.creator ...
    # Tests use their own prefix, which isolates them like a vhost would.
    bus_prefix: str = "ferry"
    prefetch: int = 16
    # The most connections one process's pool opens; 0: what the services it hosts need (4, 2
    # more per service, 12 more with the gateway). Each process has its own pool, and their sum
    # must stay under PostgreSQL's max_connections (100 by default): the six services and the
    # gateway one process each take up to 52, two replicas of each 104 (docs/operations.md).
    database_pool_max: int = Field(0, ge=0)
    # Retry delays (seconds) for a failed handler; after the last one it is dead-lettered.
    retry_delays: tuple[float, ...] = (1.0, 5.0, 30.0)

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8470
    # Gateway worker processes on that one port (SO_REUSEPORT: the kernel spreads connections
    # among them), each with its own pool and live feed; `python -m services.gateway` runs them
    # under a small supervisor (docs/operations.md).
    gateway_workers: int = Field(1, ge=1, le=64)
    # The URL VMs use to reach the gateway (the migration network's view of it). Default:
    # https (http with gateway_plain_http) at 127.0.0.1 and gateway_port.
    gateway_url: str = ""
    operator_token: str | None = None
    # Gateway limits (docs/security.md). A request body larger than this is refused with 413.
    gateway_max_body_bytes: int = 2 * 1024 * 1024
    # Longest a request may be handled before a 503 (the event stream excepted); above the
    # 60 s a replica's long poll on its master may wait.
    gateway_request_timeout_s: float = 90.0
    # Longest a replica's long poll on its master's status (?wait=) is held.
    gateway_long_poll_max_s: float = 60.0
    # Token failures (401/403) allowed per client address within the window; past that the
    # address gets 429 with Retry-After until the window frees. Counted in the gateway's memory.
    gateway_auth_failures: int = 20
    gateway_auth_window_s: float = 60.0
    # Serve the gateway over HTTPS with this certificate chain and key (PEM); both or neither.
    # Neither: the installation's own, made in state_dir/tls/ (shared/tls.py, docs/security.md).
    gateway_tls_cert: Path | None = None
    gateway_tls_key: Path | None = None
    # Serve plain HTTP instead of HTTPS (VM tokens then cross the migration network in clear;
    # the demo says so in yellow). Ignored when a certificate is configured above.
    gateway_plain_http: bool = False
    # More names (DNS names or addresses, comma-separated) for the installation's gateway
    # certificate, beside localhost, 127.0.0.1, this machine's name and the migration address.
    gateway_tls_names: str = ""
    # The boot listener: plain HTTP, serving only the migration image's boot chain (iPXE script,
    # kernel, initrds, the CA), never a token, because the Debian iPXE the VMs boot speaks no
    # TLS. 0: none.
    gateway_boot_port: int = 8471

    # The TSIG key (BIND key file, as tsig-keygen prints it) that signs the cutover's DNS
    # updates; default: state_dir/dns/tsig.key (the lab's site DNS makes one there).
    dns_key_file: Path | None = None
    # The Fernet keys that seal the secrets the store keeps (docs/security.md); default:
    # state_dir/secrets.key, made (mode 0600) at the gateway's first start.
    secrets_key_file: Path | None = None

    state_dir: Path = Field(default_factory=_state_dir)
    archive_dir: Path | None = None
    provider: str = "libvirt"  # real VMs through libvirt; "sim" for simulated ones
    # The libvirt provider (docs/providers.md). Hosts: connection URIs, comma-separated
    # (qemu:///system, qemu+ssh://root@host/system); a new VM goes to the one with the most
    # free memory that fits it.
    libvirt_uris: str = "qemu:///system"
    # "auto" probes KVM briefly and falls back to TCG (<domain type='qemu'>); "kvm" or "qemu".
    libvirt_domain_type: str = "auto"
    # The storage pool of the VMs' disks, made (a directory pool at this path) if missing.
    libvirt_pool: str = "ferry"
    libvirt_pool_path: Path = Path("/var/lib/libvirt/images/ferry")
    # The migration network (isolated, its DHCP answers PXE); the host holds its first address.
    libvirt_migration_subnet: str = "10.215.0.0/24"
    # The boot URL iPXE gets by DHCP; ${uuid} and ${serial} are iPXE's (the VM id and its boot
    # token). Default: the gateway at the migration network's host address and gateway_port.
    libvirt_boot_url: str | None = None
    # Group networks route only to this host device (the lab: its legacy site's veth); empty:
    # routed by the host's own routes.
    libvirt_group_forward_dev: str = ""
    # Where deploy/lab/build-images.sh caches its chroots and images (images-<hash>/, latest).
    lab_cache: Path = Field(default_factory=_lab_cache)
    # The image folder to use; default: the newest build in lab_cache.
    lab_images: Path | None = None
    # The archiver's SSH identity for `kind: ssh` sources without a key_file of their own.
    ssh_key_file: Path | None = None
    # How the archiver notices a legacy host gone quiet (docs/reliability.md, "Archive store
    # and legacy host faults"). A host that does not answer the TCP connect or send its SSH
    # banner within ssh_connect_timeout_s fails at once; one that vanishes mid-stream is given
    # up after ssh_alive_count_max keepalives ssh_alive_interval_s apart go unanswered; one
    # whose connection lives but whose stream sends no byte for archive_no_data_timeout_s
    # (a tar stuck on a hung mount, a dump waiting on a lock) is given up too.
    ssh_connect_timeout_s: int = Field(15, ge=1)
    ssh_alive_interval_s: int = Field(15, ge=1)
    ssh_alive_count_max: int = Field(3, ge=1)
    archive_no_data_timeout_s: float = Field(600.0, gt=0)
    # A process without the gateway serves its own Prometheus /metrics here (0: none; the
    # gateway serves /metrics itself, for everything its process hosts).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # Retention (docs/operations.md): the coordinator's process deletes, every
    # retention_interval_s, published outbox events, processed-event records (inbox) and the
    # VM log lines of groups cancelled or finalized, once older than these many days (0: kept
    # forever), at most retention_batch rows per statement.
    retention_outbox_days: float = Field(7.0, ge=0)
    # A redelivery of an event older than this would be handled again: keep it well above the
    # longest a message may wait in a queue (retries wait seconds; a dead letter was never
    # processed, so replaying it is unaffected).
    retention_inbox_days: float = Field(30.0, ge=0)
    retention_messages_days: float = Field(30.0, ge=0)
    retention_interval_s: float = Field(3600.0, gt=0)
    retention_batch: int = Field(1000, ge=1)
    # Limits (docs/operations.md, "Limits"). VMs in the expensive phases (creating to
    # provisioning) at once, overall and per destination host; 0: no limit. The lab runs 6 VMs
    # at once on one host, well inside these.
    limit_in_flight: int = Field(20, ge=0)
    limit_in_flight_per_host: int = Field(8, ge=0)
    # VMs archived at once per legacy site (a plan's legacy_site, default its group); 0: no
    # limit. 8: the lab's 6 VMs of one group are archived together.
    limit_archives_per_site: int = Field(8, ge=0)
    # Bytes per second each archive stream (a path's tar, a database dump) is read from a
    # legacy host at most, so its production keeps serving; 0: uncapped.
    archive_bandwidth_bytes_s: int = Field(0, ge=0)
    # Deadlines (docs/operations.md): the longest a VM may stay silent in each phase (seconds
    # since its last word, or its last change of state; 0: no deadline) before the
    # coordinator's watchdog fails it, which halts its group. A plan's `deadlines` overrides
    # them for its group. Generous: under TCG a VM unpacking a big archive says nothing for
    # minutes. The watchdog looks every deadline_interval_s, at most deadline_batch VMs a look.
    deadline_archiving_s: float = Field(3600.0, ge=0)
    deadline_creating_s: float = Field(900.0, ge=0)
    deadline_configuring_s: float = Field(900.0, ge=0)
    deadline_provisioning_s: float = Field(1800.0, ge=0)
    deadline_provisioned_s: float = Field(1800.0, ge=0)
    deadline_loading_s: float = Field(3600.0, ge=0)
    deadline_replicating_s: float = Field(1800.0, ge=0)
    deadline_interval_s: float = Field(15.0, gt=0)
    deadline_batch: int = Field(100, ge=1)

    @field_validator("database_pool_max")
    @classmethod
    def _a_pool_that_works(cls, value: int) -> int:
        if 0 < value < MIN_POOL:
            raise ValueError(f"FERRY_DATABASE_POOL_MAX={value}: 0 (sized by the services) or "
                             f"at least {MIN_POOL} (the outbox relay keeps one connection "
                             "listening; a handler and the relay's publishing need one each)")
        return value

    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"

    @model_validator(mode="after")
    def _default_gateway_url(self) -> Settings:
        if not self.gateway_url:
            scheme = "http" if self.gateway_plain_http and not self.gateway_tls_cert else "https"
            # frozen: set once, here, before anyone reads it
            object.__setattr__(self, "gateway_url", f"{scheme}://127.0.0.1:{self.gateway_port}")
        return self

    @property
    def libvirt_hosts(self) -> list[str]:
        return [uri.strip() for uri in self.libvirt_uris.split(",") if uri.strip()]

    @property
    def deadlines(self) -> dict[str, float]:
        """Each watched phase's deadline (seconds of silence; 0: none), by VM state."""
        return {str(phase): getattr(self, f"deadline_{phase}_s") for phase in DEADLINE_PHASES}

    @property
    def archive_root(self) -> Path:
        return self.archive_dir or self.state_dir / "archives"

    @property
    def images_dir(self) -> Path:
        return self.lab_images or self.lab_cache / "latest"

    @property
    def ssh_identity(self) -> Path:
        return self.ssh_key_file or self.state_dir / "ssh" / "id_ed25519"

    @property
    def ssh_known_hosts(self) -> Path:
        """The archiver's own known_hosts (legacy hosts' keys, accepted on first contact)."""
        return self.state_dir / "ssh" / "known_hosts"

    @property
    def lab_dir(self) -> Path:
        """Run folders of the lab's VMs, networks and legacy hosts."""
        return self.state_dir / "lab"

    @property
    def tsig_key_file(self) -> Path:
        return self.dns_key_file or self.state_dir / "dns" / "tsig.key"

    @property
    def secrets_key_path(self) -> Path:
        return self.secrets_key_file or self.state_dir / "secrets.key"

    @property
    def operator_token_file(self) -> Path:
        return self.state_dir / "operator-token"


def environment_of(settings: Settings, **overrides: str) -> dict[str, str]:
    """FERRY_* variables that a child process's Settings() reads back as `settings`, plus
    `overrides` (gateway_workers="2" ...): how a test or a benchmark starts a real process."""
    import json

    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        text = json.dumps(list(value)) if isinstance(value, (tuple, list)) else str(value)
        env[f"FERRY_{name.upper()}"] = text
    env.update({f"FERRY_{k.upper()}": v for k, v in overrides.items()})
    return env
