"""The role rules: the order of the roles, which role each operator route needs (declared on
the route, stated in the OpenAPI document), the audit cursor and the event-stream cookie."""

from __future__ import annotations

import pytest

from services.gateway.api import Api
from services.gateway.app import build_app  # noqa: F401 - registers every route
from services.gateway.api import api
from services.gateway.auth import Actor, events_cookie_value
from services.gateway.openapi import openapi_document
from shared import listing
from shared.roles import BOOTSTRAP, NAME, ROLES, allows, is_action

READS_ABOVE_VIEWER = {("GET", "/v1/groups/{group}/verify"), ("GET", "/v1/tokens")}
# Posts that change nothing: a viewer's sign-in to the web UI.
POSTS_FOR_VIEWERS = {("POST", "/v1/ui/session")}


@pytest.mark.parametrize("held, needed, allowed", [
    ("viewer", "viewer", True), ("viewer", "operator", False), ("viewer", "admin", False),
    ("operator", "viewer", True), ("operator", "operator", True), ("operator", "admin", False),
    ("admin", "viewer", True), ("admin", "operator", True), ("admin", "admin", True),
])
def test_a_higher_role_does_what_a_lower_one_can(held, needed, allowed):
    assert allows(held, needed) is allowed


def test_an_unknown_role_is_an_error_not_a_refusal():
    with pytest.raises(ValueError, match="root"):
        allows("root", "viewer")
    with pytest.raises(ValueError, match="owner"):
        allows("admin", "owner")


def test_only_what_needs_more_than_a_viewer_is_an_action():
    assert [is_action(r) for r in ROLES] == [False, True, True]


def test_every_operator_route_declares_its_role_and_no_other_route_does():
    for route in api.routes:
        assert (route.auth == "operator") == (route.role in ROLES), (route.method, route.path)


def test_a_route_without_its_role_is_refused_when_registered():
    table = Api()
    with pytest.raises(ValueError, match="names its role"):
        table.route("POST", "/v1/x", "x", auth="operator", tag="t")
    with pytest.raises(ValueError, match="only an operator route"):
        table.route("GET", "/v1/y", "y", auth="vm", tag="t", role="viewer")


def test_every_write_needs_more_than_a_viewer_and_reads_need_a_viewer():
    """What changes something is never a viewer's; what only reads is, but for the token list
    (an admin's) and verify (it sends the plan's checks out from the gateway)."""
    for route in (r for r in api.routes if r.auth == "operator"):
        key = (route.method, route.path)
        if route.method == "GET":
            assert (route.role != "viewer") == (key in READS_ABOVE_VIEWER), key
        else:
            assert (route.role == "viewer") == (key in POSTS_FOR_VIEWERS), key


def test_the_issue_s_roles():
    role = {route.handler.__name__: route.role for route in api.routes if route.role}
    assert {name: role[name] for name in ("submit", "retry", "resume", "verify", "cutover")} \
        == dict.fromkeys(("submit", "retry", "resume", "verify", "cutover"), "operator")
    admin = ("list_tokens", "create_token", "revoke_token", "replay", "cancel", "finalize",
             "prune")
    assert {name: role[name] for name in admin} == dict.fromkeys(admin, "admin")
    assert role["metrics"] == role["events_stream"] == role["audit_trail"] == "viewer"


def test_the_openapi_document_states_each_operation_s_role():
    document = openapi_document(api)
    stated = {(method.upper(), path): op.get("x-ferry-role")
              for path, ops in document["paths"].items() for method, op in ops.items()}
    for route in api.routes:
        assert stated[(route.method, route.path)] == route.role
    cancel = document["paths"]["/v1/groups/{group}/cancel"]["post"]
    assert "admin role" in cancel["description"]
    assert cancel["responses"]["403"]["description"] == "the token's role is below admin"


def test_the_audit_cursor_holds_an_id_and_nothing_else():
    cursor = listing.encode_cursor("audit", (1234,))
    assert listing.decode_cursor("audit", cursor) == (1234,)
    for key in ((0,), (True,), ("12",), (2**63,)):
        with pytest.raises(listing.ListingError, match="cursor"):
            listing.decode_cursor("audit", listing.encode_cursor("audit", key))
    with pytest.raises(listing.ListingError, match="cursor"):  # a cursor of another listing
        listing.decode_cursor("audit", listing.encode_cursor("vms", (1,)))


def test_token_names():
    assert NAME.fullmatch("ci-runner.2") and NAME.fullmatch(BOOTSTRAP)
    for bad in ("", "Alice", "-x", "a b", "a:b", "x" * 64, "é"):
        assert not NAME.fullmatch(bad), bad


def test_the_event_stream_cookie_is_bound_to_the_token_and_the_bootstrap_secret():
    alice = Actor("alice", "viewer", b"\x01" * 32)
    value = events_cookie_value("secret", alice)
    assert value.startswith("alice:") and "secret" not in value
    assert value == events_cookie_value("secret", alice)
    others = {events_cookie_value("other", alice),
              events_cookie_value("secret", Actor("alice", "viewer", b"\x02" * 32)),
              events_cookie_value("secret", Actor("bob", "viewer", b"\x01" * 32))}
    assert value not in others and len(others) == 3
