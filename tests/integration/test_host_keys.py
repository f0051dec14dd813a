"""Host keys pinned (docs/security.md, "Host keys"), against real sshd: a legacy host whose key
changed after its first archive is refused at archiving; a new VM presenting a key other than
the one it reported is refused at the cutover, which rolls back; the host-keys route takes only
public keys, and only from the VM's own token.

The machines are network namespaces running this machine's sshd (tests/integration/
legacy_netns.py, namespaces ferry-hk-*); the rest of the product is real, the fake provider at
the edge.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from shared import events as ev
from shared import journey
from shared.cutover_adapters import CutoverAdapters
from shared.host_keys import parse_key, write_known_hosts
from shared.providers.base import BootSource
from shared.providers.fake import FakeProvider
from shared.ssh import Remote, RemoteError
from shared.states import VmState
from shared.store.session import Store
from tests.conftest import eventually
from tests.integration import legacy_netns
from tests.integration.harness import Ferry, RecordingMachines, first_boot_app, start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

VM = """
  - name: {name}
    role: app
    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    network: {{address: {address}/24, hostname: {name}.example}}
"""


def plan(group: str, *names: str, extra: str = "") -> str:
    """A group of app VMs (app1 by default), each with the `extra` lines of a VM entry."""
    vms = "".join(VM.format(name=name, address=f"10.20.0.{11 + n}") + extra
                  for n, name in enumerate(names or ("app1",)))
    return f"group: {group}\nvms:{vms}"


@pytest.fixture
def machine(tmp_path: Path):
    """A machine with a real sshd, in a namespace of its own; its folder holds its keys."""
    folder = tmp_path / "machine"
    host = legacy_netns.start(folder, prefix="hk")
    try:
        yield host, folder
    finally:
        legacy_netns.stop(host)


def forged_key(tmp_path: Path) -> str:
    """A public host key no sshd here presents."""
    path = tmp_path / "forged"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@forged", "-f",
                    str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


# --- archiving: a legacy host's key recorded at its first archive ----------------------------

async def test_a_legacy_host_whose_key_changed_after_its_first_archive_is_refused(
        settings, operator, tmp_path, machine):
    """The first archive records the host's key; the host then presents another (rebuilt, or
    another machine at its address): the next group reading it fails at its archive step,
    naming the host, the known_hosts and how to accept the change on purpose; the recorded
    key is left as it was."""
    host, folder = machine
    source = tmp_path / "srv"
    source.mkdir()
    (source / "index.html").write_text("old site\n")
    extra = (f"    archives: [{{path: {source}}}]\n"
             f"    source: {{kind: ssh, host: {host.address}, key_file: {host.key_file}}}\n")
    await eventually(host.answers, what="the host's sshd")
    ferry = await start_ferry(settings, operator)
    try:
        first = await ferry.submit(plan("first", extra=extra))
        [vm_id] = (await ferry.vm_ids(first)).values()
        await ferry.wait_state(vm_id, "created", "configuring", timeout=60)
        recorded = settings.ssh_known_hosts.read_text()
        assert legacy_netns.host_key(folder).split()[1] in recorded

        legacy_netns.replace_host_key(host, folder)
        await eventually(host.answers, what="the host's sshd, restarted")
        second = await ferry.submit(plan("second", extra=extra))
        await ferry.wait_group(second, "halted", timeout=60)
        vm = await ferry.pool.fetchrow("SELECT * FROM vms WHERE group_id = $1", second)
        assert (vm["state"], vm["step"]) == ("failed", "archive"), dict(vm)
        message = vm["message"]
        assert (f"the SSH host key of {host.address} port 22 is not the one recorded in "
                f"{settings.ssh_known_hosts}") in message, message
        assert f"ssh-keygen -R {host.address} -f {settings.ssh_known_hosts}" in message
        assert settings.ssh_known_hosts.read_text() == recorded
        assert ferry.provider.created == 1  # the first group's VM only
    finally:
        await ferry.host.stop()


async def test_a_legacy_host_is_held_to_the_keys_the_plan_gives(settings, operator, tmp_path,
                                                               machine):
    """A plan that gives the host's keys (source.host_keys): a host presenting another is
    refused at its first archive, saying the plan's keys are not the host's; with its real key
    in the plan the archive goes through, and nothing is recorded in the archiver's own
    known_hosts (the plan's keys are the truth)."""
    host, folder = machine
    source = tmp_path / "srv"
    source.mkdir()
    (source / "index.html").write_text("old site\n")

    def extra(key: str) -> str:
        return (f"    archives: [{{path: {source}}}]\n"
                f"    source: {{kind: ssh, host: {host.address}, key_file: {host.key_file},"
                f" host_keys: ['{key}']}}\n")
    await eventually(host.answers, what="the host's sshd")
    ferry = await start_ferry(settings, operator)
    try:
        wrong = await ferry.submit(plan("wrong", extra=extra(forged_key(tmp_path))))
        await ferry.wait_group(wrong, "halted", timeout=60)
        vm = await ferry.pool.fetchrow("SELECT * FROM vms WHERE group_id = $1", wrong)
        assert (vm["state"], vm["step"]) == ("failed", "archive"), dict(vm)
        assert (f"the SSH host key of {host.address} port 22 is not one of those the plan "
                "gives for it (source.host_keys") in vm["message"], vm["message"]

        right = await ferry.submit(plan("right", extra=extra(legacy_netns.host_key(folder))))
        [vm_id] = (await ferry.vm_ids(right)).values()
        await ferry.wait_state(vm_id, "created", "configuring", timeout=60)
        assert not settings.ssh_known_hosts.exists() or \
            host.address not in settings.ssh_known_hosts.read_text()
    finally:
        await ferry.host.stop()


# --- the cutover: a new VM's keys as it reported them -----------------------------------------

class LegacyRecorded:
    """The cutover's SSH edge: the legacy hosts a recording double (their maintenance page
    and forwarding are not this test's), the new VM the real Remote."""

    def __init__(self) -> None:
        self.legacy = RecordingMachines()

    def __call__(self, label: str, *args, **kwargs):
        if label.startswith("legacy "):
            return self.legacy(label, *args, **kwargs)
        return Remote(label, *args, **kwargs)


async def archived_by_hand(ferry: Ferry, group_id: uuid.UUID) -> None:
    """What the archiver does for a VM with nothing to archive (its legacy host is a double
    here): archiving, archived, archive.ready."""
    store = Store(ferry.pool)
    for vm_id in (await ferry.vm_ids(group_id)).values():
        async with store.transaction() as tx:
            await journey.transition(tx, vm_id, VmState.ARCHIVING, step="archive")
            await journey.transition(tx, vm_id, VmState.ARCHIVED, step="archive")
            await tx.publish(ev.ArchiveReady(archives=[]), group_id=group_id, vm_id=vm_id)


class AtTheMachine(FakeProvider):
    """The fake provider, with every VM at the test machine's address (as the libvirt provider
    reports a VM on its group's network)."""

    def __init__(self, address: str):
        super().__init__()
        self.address = address

    async def addresses(self, ref: str) -> list[str]:
        return [self.address]


LEGACY = "    source: {kind: ssh, host: legacy-app1.example}\n"
# The archiver is left out: the legacy host is a double, archived_by_hand plays it.
NO_ARCHIVER = ("creator", "configurator", "provisioner", "coordinator", "cutover")


async def ready_group(ferry: Ferry, reported: list[str] | None) -> uuid.UUID:
    """A one-VM group, ready: its VM configured (reporting `reported` host keys, or none) and
    booted from disk."""
    group_id = await ferry.submit(plan("pin", extra=LEGACY))
    await archived_by_hand(ferry, group_id)
    [vm_id] = (await ferry.vm_ids(group_id)).values()
    await ferry.wait_booted(vm_id, BootSource.NETWORK)
    async with ferry.vm(vm_id) as vm:
        await vm.script()
        await vm.state("configuring", "host-keys")
        if reported is not None:
            await vm.host_keys(reported)
        await vm.state("configured", "done")
    await first_boot_app(ferry, vm_id)
    await ferry.wait_group(group_id, "ready")
    return group_id


async def cutover(ferry: Ferry) -> dict:
    """Request a cutover of group pin; the run once it ended."""
    async with ferry.operator.post("/v1/groups/pin/cutover", json={}) as response:
        assert response.status == 202, await response.text()
        run_id = (await response.json())["run_id"]

    async def ended():
        row = await ferry.pool.fetchrow("SELECT * FROM cutover_runs WHERE id = $1::uuid",
                                        run_id)
        return row if row["status"] not in ("requested", "running") else None
    return dict(await eventually(ended, 60, what="the run to end"))


async def test_a_new_vm_presenting_a_key_other_than_it_reported_is_refused_at_the_cutover(
        settings, operator, tmp_path, machine):
    """The VM reported one key; the machine at its address presents another: the run is
    refused before its first step, naming the VM, its address, the pinned and the presented
    fingerprints; nothing ran on the legacy host (no maintenance page) nor on the machine,
    and the group is ready as before."""
    host, folder = machine
    forged = forged_key(tmp_path)
    reach = LegacyRecorded()
    ferry = await start_ferry(
        settings, operator, provider=AtTheMachine(host.address), services=NO_ARCHIVER,
        cutover=CutoverAdapters(host.key_file, settings.ssh_known_hosts, tmp_path / "no-tsig",
                                remote=reach))
    try:
        await eventually(host.answers, what="the VM's sshd")
        group_id = await ready_group(ferry, [forged])
        run = await cutover(ferry)
        presented = parse_key(legacy_netns.host_key(folder)).fingerprint
        pinned = parse_key(forged).fingerprint
        assert run["status"] == "failed", run
        assert (f"new app1 at {host.address} port 22 presented an SSH host key other than the "
                f"one it reported (pinned: ssh-ed25519 {pinned}; presented: {presented})"
                ) in run["reason"], run["reason"]
        assert await ferry.pool.fetchval(
            "SELECT count(*) FROM cutover_steps WHERE run_id = $1", run["id"]) == 0
        assert reach.legacy.ran == []
        [vm_id] = (await ferry.vm_ids(group_id)).values()
        assert await ferry.state(vm_id) == "ready"
        assert await ferry.group_status(group_id) == "ready"
        known = (settings.state_dir / "cutover" / "pin" / "known_hosts-new-vms").read_text()
        assert known == f"{host.address} {' '.join(forged.split()[:2])}\n"
    finally:
        await ferry.host.stop()


async def test_a_new_vm_that_reported_no_host_key_is_refused_before_any_step(
        settings, operator, tmp_path, machine):
    host, _ = machine
    ferry = await start_ferry(
        settings, operator, provider=AtTheMachine(host.address), services=NO_ARCHIVER,
        cutover=CutoverAdapters(host.key_file, settings.ssh_known_hosts, tmp_path / "no-tsig",
                                remote=LegacyRecorded()))
    try:
        group_id = await ready_group(ferry, None)
        run = await cutover(ferry)
        assert run["status"] == "failed", run
        assert run["reason"].startswith(
            f"app1 at {host.address} reported no SSH host keys"), run["reason"]
        assert await ferry.pool.fetchval(
            "SELECT count(*) FROM cutover_steps WHERE run_id = $1", run["id"]) == 0
        [vm_id] = (await ferry.vm_ids(group_id)).values()
        assert await ferry.state(vm_id) == "ready"
    finally:
        await ferry.host.stop()


async def test_the_pinned_known_hosts_reaches_the_vm_with_its_own_key_only(tmp_path, machine):
    """The cutover's reach to a new VM, with the key it reported pinned, runs a command there;
    the same machine with a forged key pinned is refused before anything runs."""
    host, folder = machine
    await eventually(host.answers, what="the VM's sshd")
    reach = CutoverAdapters(host.key_file, tmp_path / "legacy_known_hosts", tmp_path / "tsig")
    # Short, as the cutover's own: a unix socket's path must fit in 108 bytes.
    control = Path(tempfile.mkdtemp(prefix="ferry-hk-"))
    for name, line in (("real", legacy_netns.host_key(folder)), ("forged", forged_key(tmp_path))):
        keys = (parse_key(line),)
        known = tmp_path / f"known_hosts-{name}"
        write_known_hosts(known, {(host.address, 22): list(keys)})
        new = reach.new_vm("new app1", host.address, known, control / name, keys)
        (control / name).mkdir()
        try:
            if name == "real":
                assert (await new.run("echo reached", what="a probe")).strip() == "reached"
            else:
                with pytest.raises(RemoteError, match="presented an SSH host key other than"):
                    await new.run("echo reached", what="a probe")
        finally:
            await new.close()
            shutil.rmtree(control / name, ignore_errors=True)
        assert known.read_text() == f"{host.address} {keys[0].line}\n"  # ssh added nothing
    control.rmdir()


# --- the route -------------------------------------------------------------------------------

async def test_the_host_keys_route_takes_public_keys_from_the_vms_own_token_only(
        settings, operator, tmp_path):
    """A VM's keys are stored and shown in its JSON; garbage is refused (422) and changes
    nothing; another VM's token is refused (403), no token at all too (401)."""
    ferry = await start_ferry(settings, operator)
    try:
        group_id = await ferry.submit(plan("pair", "app1", "app2"))
        ids = await ferry.vm_ids(group_id)
        for vm_id in ids.values():
            await ferry.wait_booted(vm_id, BootSource.NETWORK)
        key = forged_key(tmp_path)
        url = f"{settings.gateway_url}/v1/vms/{ids['app1']}/host-keys"
        session = ferry.operator

        async def post(body, token: str | None):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with session.post(url, json=body, headers=headers) as response:
                return response.status, await response.json()

        status, body = await post({"keys": [key]}, ferry.token(ids["app2"]))
        assert status == 403 and body["error"] == "this token belongs to another VM"
        status, _ = await post({"keys": [key]}, None)
        assert status == 401
        for garbage, where in ((["ssh-ed25519 AAAA"], "key 1: the ssh-ed25519 key is 3 bytes"),
                               ([f"ssh-foo {key.split()[1]}"], "unknown host key type"),
                               ([key, key], "more than one ssh-ed25519 key"),
                               ([], None), ("not a list", None), ([key] * 9, None)):
            status, body = await post({"keys": garbage}, ferry.token(ids["app1"]))
            assert status == 422, (garbage, body)
            if where:
                assert where in body["problems"][0]["message"], body
        assert await ferry.pool.fetchval("SELECT count(*) FROM vm_host_keys") == 0

        status, body = await post({"keys": [key]}, ferry.token(ids["app1"]))
        fingerprint = f"ssh-ed25519 {parse_key(key).fingerprint}"
        assert (status, body) == (201, {"fingerprints": [fingerprint]})
        async with operator.get(f"/v1/groups/{group_id}") as response:
            vms = {vm["name"]: vm for vm in (await response.json())["vms"]}
        assert vms["app1"]["host_keys"] == [fingerprint]
        assert vms["app2"]["host_keys"] == []
    finally:
        await ferry.host.stop()
