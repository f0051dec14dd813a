"""The limits' rules (shared/limits.py): which VMs hold an in-flight slot, where a waiting VM
may go, and what it says while it waits."""

from __future__ import annotations

import pytest

from shared.limits import IN_FLIGHT, archive_waiting, holds_slot, place
from shared.states import VmState

S = VmState


@pytest.mark.parametrize("state", list(S))
def test_a_slot_is_held_from_creating_until_provisioned(state):
    """Creating, created, configuring, configured and provisioning hold a slot; provisioned
    and everything after it, anything before creation, failed and cancelled do not."""
    expected = state in {S.CREATING, S.CREATED, S.CONFIGURING, S.CONFIGURED, S.PROVISIONING}
    assert holds_slot(state) is expected


@pytest.mark.parametrize("held", list(S))
def test_a_halted_vm_keeps_the_slot_of_where_it_is_parked(held):
    """Parked by a halt at created or configured, a VM keeps its slot (a resume moves it on
    without asking); parked at planned or archived, it holds none."""
    assert holds_slot(S.HALTED, held) is (held in IN_FLIGHT)


def test_a_vm_goes_to_its_first_host_with_a_free_slot():
    assert place(["a", "b"], {"a": 1}, overall=10, per_host=2) == ("a", None)
    assert place(["a", "b"], {"a": 2, "b": 1}, overall=10, per_host=2) == ("b", None)


def test_a_vm_waits_when_every_host_of_it_is_full_and_says_which():
    host, why = place(["a", "b"], {"a": 2, "b": 2}, overall=10, per_host=2)
    assert host is None
    assert why == "waiting for a slot: 2 of 2 in flight on host a (and on its 1 other host(s))"
    assert place(["x"], {"x": 8}, overall=0, per_host=8) == (
        None, "waiting for a slot: 8 of 8 in flight on host x")


def test_the_overall_limit_counts_every_host():
    host, why = place(["c"], {"a": 3, "b": 2}, overall=5, per_host=8)
    assert host is None and why == "waiting for a slot: 5 of 5 in flight overall"
    assert place(["c"], {"a": 3, "b": 1}, overall=5, per_host=8) == ("c", None)


def test_zero_means_no_limit():
    assert place(["a"], {"a": 1000}, overall=0, per_host=0) == ("a", None)
    assert archive_waiting(1000, 0, "dc1") is None


def test_a_provider_without_a_host_for_the_vm_makes_it_wait_saying_so():
    host, why = place([], {}, overall=0, per_host=8)
    assert host is None and "no host" in why


def test_an_archive_waits_once_its_site_is_full():
    assert archive_waiting(3, 4, "dc1") is None
    assert archive_waiting(4, 4, "dc1") == "waiting for an archive slot: 4 of 4 on site dc1"


# --- the creator and the archiver applying them (tests/unit/fakes.py) -------------------------

@pytest.fixture
def limited(tmp_path):
    """Ferryman on the fakes with at most 2 VMs in flight, and 1 archive at a time per site."""
    from shared.settings import Settings
    from tests.unit.test_handlers import World

    world = World(tmp_path)
    world.bus.deps.settings = Settings(state_dir=tmp_path, lab_images=tmp_path / "no-images",
                                       limit_in_flight=2, limit_in_flight_per_host=0,
                                       limit_archives_per_site=1)
    return world


async def test_the_vm_past_the_limit_waits_saying_so_and_goes_on_when_a_slot_frees(limited):
    """Two of three VMs are created; the third stays archived, saying why, on the VM and in
    its log; a redelivered group.archived admits nothing more; when one VM is provisioned
    the third is created."""
    world = limited
    await world.submit()
    assert [world.state(n) for n in ("app1", "db1", "db2")] == \
        [S.CONFIGURING, S.CONFIGURING, S.ARCHIVED]
    why = "waiting for a slot: 2 of 2 in flight overall"
    assert world.vm("db2").waiting == why
    assert [m[3] for m in world.store.tables.messages if m[1] == world.vm("db2").id
            and m[3].startswith("waiting for a slot")] == [why]

    archived = world.published("group.archived")[0]
    await world.bus.deliver(archived.model_copy(update={"id": archived.id}))
    await world.bus.settle()
    assert world.state("db2") == S.ARCHIVED and world.provider.created == 2

    await world.configure("app1")
    assert world.state("db2") == S.ARCHIVED  # provisioning still holds the slot
    await world.report("app1", "provisioned", "first-boot")
    assert world.state("db2") == S.CONFIGURING and world.vm("db2").waiting is None
    assert world.provider.created == 3


async def test_a_failure_frees_its_slot(limited):
    """A VM that fails while configuring frees its slot: the waiting VM is created (and
    parked at created by the halt the failure causes, keeping its slot there)."""
    world = limited
    await world.submit()
    assert world.state("db2") == S.ARCHIVED
    await world.report("app1", "failed", "partition", message="disk on fire")
    db2 = world.vm("db2")
    assert (db2.state, db2.held_state, db2.waiting) == (S.HALTED, S.CREATED, None)
    assert world.provider.created == 3


async def test_archives_of_a_site_wait_their_turn(limited):
    """With one archive at a time per site, the group's VMs are archived one after the other
    (the plan's order), and each planned VM said it waited."""
    world = limited
    await world.submit()
    starts = [t for t in world.store.tables.transitions if t[2] == S.ARCHIVING]
    ends = [i for i, t in enumerate(world.store.tables.transitions) if t[2] == S.ARCHIVED]
    assert len(starts) == 3 and len(ends) == 3
    running = 0
    for _, before, after, _ in world.store.tables.transitions:
        running += (after == S.ARCHIVING) - (before == S.ARCHIVING)
        assert running <= 1
    waited = {m[1] for m in world.store.tables.messages
              if m[3] == "waiting for an archive slot: 1 of 1 on site shop"}
    assert waited == {world.vm("db1").id, world.vm("db2").id}


def test_libvirt_offers_the_hosts_that_fit_most_free_memory_first():
    """libvirt's placements: hosts with the memory for the VM, most free first, ties in the
    order FERRY_LIBVIRT_URIS lists them; none fitting is a ProviderError naming each host."""
    from shared.providers.base import ProviderError
    from shared.providers.libvirt_hosts import choose, rank

    free = {"qemu:///a": 4000, "qemu:///b": 9000, "qemu:///c": 4000, "qemu:///d": 500}
    assert rank(free, 1024) == ["qemu:///b", "qemu:///a", "qemu:///c"]
    assert choose(free, 1024) == "qemu:///b"
    with pytest.raises(ProviderError, match="qemu:///d: 500 MiB free"):
        rank(free, 16000)


async def test_a_provider_with_no_host_for_a_vm_fails_it_at_create(limited, monkeypatch):
    """placements() refusing (libvirt: no host has the memory) fails the VM at create with the
    provider's words, as a refused creation would, and halts its group; nothing is made."""
    from shared.providers.base import ProviderError

    async def no_room(spec, *, idempotency_key):
        raise ProviderError(f"no libvirt host has {spec.memory_mb} MiB of free memory")

    monkeypatch.setattr(limited.provider, "placements", no_room)
    await limited.submit()
    app1 = limited.vm("app1")
    assert (app1.state, app1.step, app1.failed_from) == (S.FAILED, "create", S.CREATING)
    assert app1.message == "no libvirt host has 512 MiB of free memory"
    assert limited.provider.created == 0
    assert limited.group().status == "halted"
