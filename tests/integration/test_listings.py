"""Listings at fleet scale against the real gateway and PostgreSQL: 120 groups (360 VMs) paged
50 at a time are listed exactly once each, even with groups submitted between pages; totals
count the filter's matches; filters by status and name; bad parameters are 400s that name the
parameter; the fleet's counts add up."""

from __future__ import annotations

import pytest

from services.runtime import Host
from tests.integration.harness import THREE_VMS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

GROUPS = 120
HALTED = ("g003", "g050", "g117")


@pytest.fixture
async def fleet(settings, operator):
    """A gateway (no services: nothing moves) holding GROUPS groups of three VMs, g000 the
    oldest; HALTED are halted, and in g050 app1 has failed."""
    host = Host(settings, [], gateway=True)
    await host.start()
    try:
        for i in range(GROUPS):
            await submit(operator, f"g{i:03d}")
        async with host.pool.acquire() as conn:
            schema = settings.database_schema
            await conn.execute(f"UPDATE {schema}.groups SET status = 'halted'"
                               " WHERE name = ANY($1::text[])", list(HALTED))
            await conn.execute(f"UPDATE {schema}.vms SET state = 'failed' FROM {schema}.groups g"
                               " WHERE g.id = group_id AND g.name = 'g050' AND vms.name = 'app1'")
        yield host
    finally:
        await host.stop()


async def submit(operator, name: str) -> None:
    async with operator.post("/v1/groups", data=THREE_VMS.format(group=name)) as answer:
        assert answer.status == 201, await answer.text()


async def get(operator, path: str, **params) -> tuple[int, dict]:
    async with operator.get(path, params=params) as answer:
        return answer.status, await answer.json()


async def test_pages_partition_the_groups_even_when_groups_arrive_between_pages(fleet,
                                                                                operator):
    """Three pages of 50, 50 and 20, newest first; five groups submitted after the first page
    neither repeat nor push out a group: the pages hold the 120 exactly once."""
    seen: list[str] = []
    cursor, pages = None, []
    while True:
        params = {"limit": "50", **({"cursor": cursor} if cursor else {})}
        status, page = await get(operator, "/v1/groups", **params)
        assert status == 200, page
        pages.append(len(page["groups"]))
        seen += [g["name"] for g in page["groups"]]
        assert page["limit"] == 50
        assert page["total"] == GROUPS + (5 if len(pages) > 1 else 0)
        cursor = page["next_cursor"]
        if len(pages) == 1:
            for i in range(5):
                await submit(operator, f"late{i}")
        if cursor is None:
            break
    assert pages == [50, 50, 20]
    assert seen == [f"g{i:03d}" for i in reversed(range(GROUPS))]
    status, first = await get(operator, "/v1/groups")
    assert len(first["groups"]) == 50 and first["groups"][0]["name"] == "late4"


async def test_filters_by_status_and_name_count_their_matches(fleet, operator):
    status, halted = await get(operator, "/v1/groups", status="halted")
    assert status == 200
    assert sorted(g["name"] for g in halted["groups"]) == sorted(HALTED)
    assert (halted["total"], halted["next_cursor"]) == (3, None)
    _, both = await get(operator, "/v1/groups", status="halted,active", limit="1")
    assert both["total"] == GROUPS and len(both["groups"]) == 1 and both["next_cursor"]
    _, named = await get(operator, "/v1/groups", name="G11")
    assert [g["name"] for g in named["groups"]] == [f"g11{i}" for i in reversed(range(10))]
    assert named["total"] == 10
    # LIKE's wildcards are plain characters: no group name holds them.
    for text in ("%", "_", "\\"):
        _, none = await get(operator, "/v1/groups", name=text)
        assert (none["total"], none["groups"]) == (0, [])
    # A cursor keeps paging within the filter it came with.
    _, page1 = await get(operator, "/v1/groups", status="halted", limit="2")
    _, page2 = await get(operator, "/v1/groups", status="halted", limit="2",
                         cursor=page1["next_cursor"])
    assert [g["name"] for g in page1["groups"] + page2["groups"]] == sorted(HALTED,
                                                                           reverse=True)


async def test_vms_are_listed_across_groups_a_page_at_a_time(fleet, operator):
    names, cursor = [], None
    while True:
        status, page = await get(operator, "/v1/vms", limit="500" if not names else "77",
                                 **({"cursor": cursor} if cursor else {}))
        assert status == 200, page
        assert page["total"] == GROUPS * 3
        names += [(vm["group"], vm["name"]) for vm in page["vms"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(names) == len(set(names)) == GROUPS * 3
    _, one = await get(operator, "/v1/vms", group="g007", limit="2")
    assert [vm["name"] for vm in one["vms"]] == ["app1", "db1"] and one["total"] == 3
    _, rest = await get(operator, "/v1/vms", group="g007", limit="2", cursor=one["next_cursor"])
    assert [vm["name"] for vm in rest["vms"]] == ["db2"] and rest["next_cursor"] is None
    _, failed = await get(operator, "/v1/vms", status="failed")
    assert [(vm["group"], vm["name"]) for vm in failed["vms"]] == [("g050", "app1")]
    _, db2 = await get(operator, "/v1/vms", name="DB2", limit="5")
    assert db2["total"] == GROUPS and {vm["name"] for vm in db2["vms"]} == {"db2"}


@pytest.mark.parametrize("path, params, location", [
    ("/v1/groups", {"limit": "0"}, "limit"),
    ("/v1/groups", {"limit": "501"}, "limit"),
    ("/v1/groups", {"limit": "ten"}, "limit"),
    ("/v1/groups", {"status": "halted,sleeping"}, "status"),
    ("/v1/groups", {"cursor": "not-a-cursor"}, "cursor"),
    ("/v1/vms", {"status": "halted,sleeping"}, "status"),
    ("/v1/vms", {"limit": "-1"}, "limit"),
    ("/v1/vms", {"name": "x" * 201}, "name"),
])
async def test_a_bad_parameter_is_a_400_naming_it(fleet, operator, path, params, location):
    status, body = await get(operator, path, **params)
    assert status == 400
    assert [p["location"] for p in body["problems"]] == [location]
    assert body["error"].startswith(location)
    if location == "status":
        assert "'sleeping'" in body["error"] and "halted" in body["error"].split("allowed:")[1]


async def test_a_cursor_of_another_listing_or_a_missing_group_is_refused(fleet, operator):
    _, vms = await get(operator, "/v1/vms", limit="1")
    status, body = await get(operator, "/v1/groups", cursor=vms["next_cursor"])
    assert status == 400 and "not a cursor of this listing (groups)" in body["error"]
    status, body = await get(operator, "/v1/vms", group="nowhere")
    assert status == 404 and body["error"] == "no group 'nowhere'"


async def test_the_fleet_counts_groups_by_status_and_vms_by_state(fleet, operator):
    status, fleet_now = await get(operator, "/v1/fleet")
    assert status == 200
    assert fleet_now == {"groups": GROUPS, "vms": GROUPS * 3,
                         "group_statuses": {"active": GROUPS - 3, "halted": 3},
                         "vm_states": {"planned": GROUPS * 3 - 1, "failed": 1}}
    await submit(operator, "one-more")
    _, after = await get(operator, "/v1/fleet")
    assert after["groups"] == GROUPS + 1 and after["vm_states"]["planned"] == GROUPS * 3 + 2
