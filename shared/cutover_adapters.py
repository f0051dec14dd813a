"""What the cutover reaches the world with: SSH to the legacy hosts and the new VMs, DNS
updates of the site's zone, and the prober that measures the downtime from outside. The host
makes them from the settings (services/runtime.py); the cutover's handler only uses them, and a
test may hand in its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shared.dns import DnsDriver, Rfc2136Driver, TsigKey
from shared.host_keys import HostKey, parse_keys
from shared.plan import DnsSettings, Source
from shared.prober import Prober
from shared.settings import Settings
from shared.ssh import Remote, plan_known_hosts


@dataclass(frozen=True)
class CutoverAdapters:
    ssh_identity: Path  # the migration service's key, on the legacy hosts and the new VMs
    legacy_known_hosts: Path  # the legacy hosts' keys, as the archiver recorded them
    tsig_key_file: Path  # signs the zone's updates
    remote: Callable[..., Remote] = Remote
    prober: Callable[..., Prober] = Prober

    @classmethod
    def from_settings(cls, settings: Settings) -> CutoverAdapters:
        return cls(settings.ssh_identity, settings.ssh_known_hosts, settings.tsig_key_file)

    def legacy(self, label: str, source: Source, control_dir: Path) -> Remote:
        """A legacy host, reached as the archiver reached it."""
        key = self.ssh_identity if source.key_file is None else Path(source.key_file).expanduser()
        if source.host_keys:  # the plan pins its keys: those only, as the archiver did
            known = plan_known_hosts(self.legacy_known_hosts, source.host, source.port,
                                     source.host_keys)
            return self.remote(label, source.host, source.port, source.user, key, known,
                               control_dir, pinned=tuple(parse_keys(source.host_keys)),
                               pinned_from="those the plan gives (source.host_keys)")
        return self.remote(label, source.host, source.port, source.user, key,
                           self.legacy_known_hosts, control_dir)

    def new_vm(self, label: str, address: str, known_hosts: Path, control_dir: Path,
               pinned: tuple[HostKey, ...]) -> Remote:
        """A new VM, as root with the migration service's key (its root archive brought it),
        reached only if it presents one of the `pinned` host keys it reported (`known_hosts`
        holds them)."""
        return self.remote(label, address, 22, "root", self.ssh_identity, known_hosts,
                           control_dir, pinned=pinned)

    def zone(self, dns: DnsSettings) -> DnsDriver:
        """The zone's updater; DnsError when the TSIG key cannot be read."""
        return Rfc2136Driver(dns.host, dns.zone, TsigKey.from_file(self.tsig_key_file),
                             port=dns.port)
