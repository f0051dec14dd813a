"""`ferry status` and `ferry vms` page through the fleet: the options become the listing's
query, --all follows the cursors into one answer, the text says how many there are and how to
get the next page (with the same filter), -o json is the gateway's page. Against a stand-in
gateway over real HTTP (tests/unit/fake_gateway.py)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from tests.unit.test_cli import GROUP
from tests.unit.test_cli_scripting import data, ferry, gateway  # noqa: F401 - the fixture

VM = {**GROUP["vms"][0], "group_id": "0", "group": "shop", "provider": "fake",
      "simulated": False, "system": None}


def pages(seen, base: str):
    """The listing's requests, each as its query."""
    return [parse_qs(urlsplit(s.path).query) for s in seen if urlsplit(s.path).path == base]


def by_cursor(items: str, total: int, answers: dict):
    """A route answering by the request's cursor: answers[cursor] = (names, next cursor)."""
    def route(seen):
        cursor = parse_qs(urlsplit(seen.path).query).get("cursor", [None])[0]
        names, following = answers[cursor]
        rows = [{**(GROUP if items == "groups" else VM), "name": n} for n in names]
        return 200, {items: rows, "total": total, "limit": 2, "next_cursor": following}
    return route


def test_status_sends_the_filter_and_says_how_to_get_the_next_page(gateway):  # noqa: F811
    path = "/v1/groups?limit=2&name=sh&status=halted&status=active"
    gateway.answer("GET", path, by_cursor("groups", 5, {None: (["shop", "shop2"], "abc")}))
    result = ferry("status", "--limit", "2", "--name", "sh", "--status", "halted",
                   "--status", "active")
    assert result.exit_code == 0, result.output
    assert "shop2" in result.stdout
    assert ("showing 2 of 5 groups; next page: ferry status --limit 2 --name sh "
            "--status halted --status active --cursor abc (or --all for every page)"
            in result.stdout.replace("\n", " "))


def test_status_all_follows_the_cursors_into_one_answer(gateway):  # noqa: F811
    answers = {None: (["a", "b"], "c1"), "c1": (["c", "d"], "c2"), "c2": (["e"], None)}
    route = by_cursor("groups", 5, answers)
    gateway.answer("GET", "/v1/groups?status=halted", route)
    for cursor in ("c1", "c2"):
        gateway.answer("GET", f"/v1/groups?cursor={cursor}&status=halted", route)
    result = ferry("status", "--status", "halted", "--all", "-o", "json")
    assert result.exit_code == 0, result.output
    answer = data(result)
    assert [g["name"] for g in answer["groups"]] == ["a", "b", "c", "d", "e"]
    assert (answer["total"], answer["next_cursor"]) == (5, None)
    assert [q.get("cursor") for q in pages(gateway.seen, "/v1/groups")] == [
        None, ["c1"], ["c2"]]


def test_status_json_is_the_gateway_s_page_with_its_cursor(gateway):  # noqa: F811
    gateway.answer("GET", "/v1/groups?limit=2", by_cursor("groups", 9, {None: (["x", "y"], "n")}))
    result = ferry("status", "--limit", "2", "-o", "json")
    assert result.exit_code == 0, result.output
    assert data(result)["next_cursor"] == "n" and data(result)["total"] == 9
    assert result.stderr == ""


def test_the_last_page_says_only_the_count(gateway):  # noqa: F811
    gateway.answer("GET", "/v1/groups", by_cursor("groups", 1, {None: (["shop"], None)}))
    result = ferry("status")
    assert result.exit_code == 0, result.output
    assert "1 groups" in result.stdout and "next page" not in result.stdout


def test_listing_options_with_a_group_are_a_usage_error(gateway):  # noqa: F811
    result = ferry("status", "shop", "--limit", "5")
    assert result.exit_code == 2
    assert "leave GROUP out" in result.stderr
    assert gateway.seen == []


def test_a_refused_filter_is_the_gateway_s_error(gateway):  # noqa: F811
    gateway.answer("GET", "/v1/groups?status=sleeping", (400, {
        "error": "status has an unknown value 'sleeping'; allowed: active, halted",
        "problems": [{"location": "status", "message": "has an unknown value"}]}))
    result = ferry("status", "--status", "sleeping")
    assert result.exit_code == 1
    assert "status has an unknown value 'sleeping'; allowed: active, halted" in result.stderr


def test_vms_lists_a_group_s_vms_a_page_at_a_time(gateway):  # noqa: F811
    gateway.answer("GET", "/v1/vms?limit=2&group=shop",
                   by_cursor("vms", 3, {None: (["app1", "db1"], "v2")}))
    result = ferry("vms", "--group", "shop", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "app1" in result.stdout and "db1" in result.stdout
    assert ("showing 2 of 3 vms; next page: ferry vms --limit 2 --group shop --cursor v2"
            in result.stdout.replace("\n", " "))
