"""`ferry token` and `ferry audit` against a stand-in gateway over real HTTP
(tests/unit/fake_gateway.py): what they send, what they print, and a bad name refused before
anything is sent."""

from __future__ import annotations

from tests.unit.test_cli_scripting import ferry, gateway  # noqa: F401 - the fixture

MADE = {"name": "alice", "role": "operator", "created_at": "2026-12-03T08:00:00+00:00",
        "created_by": "bootstrap", "revoked_at": None, "last_used_at": None,
        "token": "tok-123456"}
LINE = {"id": 7, "at": "2026-12-03T08:01:02+00:00", "actor": "alice", "role": "operator",
        "method": "POST", "route": "/v1/groups/{group}/cutover",
        "path": "/v1/groups/shop/cutover", "status": 202, "group_id": None, "group": "shop",
        "vm_id": None, "detail": "cutover run 1"}


def test_token_create_prints_the_token_alone_on_stdout(gateway):  # noqa: F811
    gateway.answer("POST", "/v1/tokens", (201, MADE))
    result = ferry("token", "create", "alice", "--role", "operator")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "tok-123456"
    assert "shown this once" in result.stderr
    [sent] = gateway.requests("POST", "/v1/tokens")
    assert sent.body == {"name": "alice", "role": "operator"}


def test_a_bad_token_name_or_role_sends_nothing(gateway):  # noqa: F811
    for args in (["Alice", "--role", "viewer"], ["bootstrap", "--role", "viewer"],
                 ["alice", "--role", "root"]):
        result = ferry("token", "create", *args)
        assert result.exit_code == 2, result.output
    assert gateway.seen == []


def test_a_refusal_by_role_is_exit_1_with_the_gateway_s_words(gateway):  # noqa: F811
    gateway.answer("POST", "/v1/tokens", (403, {
        "error": "this needs the admin role; token 'bob' has the viewer role",
        "problems": []}))
    result = ferry("token", "create", "alice", "--role", "viewer")
    assert result.exit_code == 1
    assert "this needs the admin role; token 'bob' has the viewer role" in result.stderr


def test_audit_asks_for_the_group_and_shows_who_did_what(gateway):  # noqa: F811
    gateway.answer("GET", "/v1/audit?group=shop&limit=5",
                   (200, {"lines": [LINE], "limit": 5, "next_cursor": "xyz"}))
    result = ferry("audit", "shop", "--limit", "5")
    assert result.exit_code == 0, result.output
    text = result.stdout.replace("\n", " ")
    assert all(word in text for word in ("alice", "operator", "POST", "cutover", "202",
                                         "cutover run 1"))
    assert "ferry audit shop --cursor xyz" in text
