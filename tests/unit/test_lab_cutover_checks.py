"""The lab's checks of the real cutover refuse what they must (the lab journey itself needs
real VMs: these show its assertions can fail, and what they then say): the window
(tests/lab/cutover_lab.window_closed), a prober that never saw the old site, or never the new
one, or a downtime past the bound; PostgreSQL's stock (stock_handed_over), a row, a count or a
sequence not carried over, a hand-off left behind, a standby behind."""

from __future__ import annotations

import pytest

from tests.lab.cutover_lab import DOWNTIME_LIMIT_S, stock_handed_over, window_closed

GOOD = ("downtime 3.09s: last good answer from the old site at 3.96s, first from the new site "
        "at 7.05s, 14 failed requests between (51 probes)")


def test_a_window_seen_closing_passes():
    assert window_closed({"downtime_s": 3.0912}, GOOD) == GOOD


@pytest.mark.parametrize("summary, downtime", [
    ("the new site never answered (40 probes)", None),
    ("downtime 7.05s: last good answer from the old site at never, first from the new site at "
     "7.05s, 0 failed requests between (40 probes)", 7.05),
    (GOOD.replace("3.09s", "75.00s").replace("7.05s", "78.96s"), 75.0),
    (GOOD, 9.5),  # the run's figure is not the prober's
])
def test_a_window_not_seen_closing_fails(summary, downtime):
    with pytest.raises(AssertionError):
        window_closed({"downtime_s": downtime}, summary)
    assert DOWNTIME_LIMIT_S == 60.0


class Cluster:
    """A PostgreSQL cluster's answers to what stock_handed_over asks (psql's unaligned rows)."""

    def __init__(self, counts: dict[str, int], sequences: dict[str, int], *, tagged: int = 1,
                 subscriptions: int = 0, left: tuple[str, ...] = ()):
        self.counts, self.sequences, self.tagged = counts, sequences, tagged
        self.subscriptions, self.left = subscriptions, left

    async def __call__(self, statement: str) -> str:
        if "FROM pg_tables" in statement:
            return "\n".join(self.counts) + "\n"
        if statement.startswith("SELECT count(*) FROM movements WHERE note"):
            return f"{self.tagged}\n"
        if statement.startswith("SELECT count(*) FROM pg_subscription"):
            return f"{self.subscriptions}\n"
        if "pg_publication" in statement:
            return "".join(f"{line}\n" for line in self.left)
        if "FROM pg_sequences" in statement:
            return "".join(f"{name}|{last}\n" for name, last in self.sequences.items())
        if statement.startswith("SELECT nextval('"):
            return f"{self.sequences[statement.split(chr(39))[1]] + 1}\n"
        if statement.startswith("SELECT count(*) FROM "):
            return f"{self.counts[statement.split()[-1]]}\n"
        raise AssertionError(f"unexpected statement: {statement}")


LEGACY_COUNTS = {"public.items": 40, "public.movements": 431}
LEGACY_SEQUENCES = {"public.items_id_seq": 40, "public.movements_id_seq": 431}


def clusters(**new) -> tuple[Cluster, Cluster, Cluster]:
    """The legacy db1, the new db1 (as it should be unless `new` says otherwise), db2."""
    legacy = Cluster(LEGACY_COUNTS, LEGACY_SEQUENCES)
    moved = Cluster(new.pop("counts", LEGACY_COUNTS),
                    new.pop("sequences", {n: v + 3 for n, v in LEGACY_SEQUENCES.items()}),
                    **new)
    return legacy, moved, Cluster(moved.counts, {})


async def test_stock_handed_over_names_what_it_found():
    found = await stock_handed_over(*clusters(), "ferry-window-1")
    assert found == ("row ferry-window-1 on the new db1; rows per table as on the legacy db1 "
                     "(public.items 40, public.movements 431) and on db2; sequences past the "
                     "legacy's (public.items_id_seq > 40, public.movements_id_seq > 431); no "
                     "subscription, no ferry publication or slot left")


@pytest.mark.parametrize("new, message", [
    ({"tagged": 0}, "row ferry-window-1 written on the legacy master before the window: 0 on "
                    "the new db1"),
    ({"counts": {"public.items": 40, "public.movements": 430}},
     "rows per table on the new db1 {'public.items': 40, 'public.movements': 430}, on the "
     "legacy db1 (read-only since the cutover) {'public.items': 40, 'public.movements': 431}"),
    ({"sequences": {"public.items_id_seq": 43, "public.movements_id_seq": 1}},
     "sequences not brought forward: {'public.movements_id_seq': 'nextval 2 on the new db1, "
     "last_value 431 on the legacy'}"),
    ({"subscriptions": 1}, "1 subscriptions left on the new db1"),
])
async def test_stock_not_handed_over_says_what_is_wrong(new, message):
    with pytest.raises(AssertionError) as caught:
        await stock_handed_over(*clusters(**new), "ferry-window-1")
    assert str(caught.value) == f"stock: {message}"


async def test_a_hand_off_left_on_the_legacy_or_a_replica_behind_is_told():
    legacy, moved, replica = clusters()
    legacy.left = ("publication ferry_stock", "slot ferry_stock")
    with pytest.raises(AssertionError, match="left on the legacy db1: publication ferry_stock, "
                                             "slot ferry_stock"):
        await stock_handed_over(legacy, moved, replica, "ferry-window-1")
    legacy.left = ()
    replica.counts = {"public.items": 40, "public.movements": 429}
    with pytest.raises(AssertionError, match=r"rows per table on db2 .*429.* after 0s"):
        await stock_handed_over(legacy, moved, replica, "ferry-window-1", replica_wait_s=0.2)
