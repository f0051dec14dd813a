"""What a listing's page may ask for (shared/listing.py): the limit's range, statuses checked
against those that exist, the name filter's LIKE pattern, and cursors that round-trip while
anything else is refused as a cursor."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone

import pytest

from shared import listing
from shared.listing import ListingError, decode_cursor, encode_cursor, page_request

AT = datetime(2026, 12, 3, 7, 30, 1, 123456, tzinfo=timezone.utc)
ID = uuid.UUID("6f1c2b9e-0000-4000-8000-000000000001")
STATUSES = ["active", "halted", "ready"]


def test_a_cursor_round_trips_its_key_exactly():
    """Microseconds and the offset survive: the next page starts right after the last row."""
    assert decode_cursor("groups", encode_cursor("groups", (AT, ID))) == (AT, ID)
    assert decode_cursor("vms", encode_cursor("vms", (AT, ID, 7))) == (AT, ID, 7)


def test_a_cursor_is_url_safe_text():
    cursor = encode_cursor("vms", (AT, ID, 2))
    assert all(c.isalnum() or c in "-_" for c in cursor)


def _raw(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize("kind, cursor", [
    ("groups", "not a cursor"), ("groups", "%%%"), ("groups", "="),
    ("groups", _raw({"kind": "groups"})), ("groups", _raw(["groups", AT.isoformat()])),
    ("groups", _raw(["groups", "yesterday", str(ID)])),
    ("groups", _raw(["groups", AT.isoformat(), "no-uuid"])),
    ("groups", _raw(["groups", "2026-12-03T07:30:01", str(ID)])),  # a time without its offset
    ("groups", _raw(["groups", AT.isoformat(), 12])),
    ("vms", _raw(["vms", AT.isoformat(), str(ID), "3"])),
    ("vms", _raw(["vms", AT.isoformat(), str(ID), True])),
    ("vms", _raw(["vms", AT.isoformat(), str(ID), -1])),
    ("vms", _raw(["vms", AT.isoformat(), str(ID)])),
    ("groups", base64.urlsafe_b64encode(b"\xff\xfe").decode()),
])
def test_anything_but_a_cursor_of_the_listing_is_refused_as_a_cursor(kind, cursor):
    with pytest.raises(ListingError) as refused:
        decode_cursor(kind, cursor)
    assert refused.value.location == "cursor"


def test_a_cursor_of_one_listing_is_refused_by_another():
    with pytest.raises(ListingError, match=r"not a cursor of this listing \(vms\)"):
        decode_cursor("vms", encode_cursor("groups", (AT, ID)))


def test_no_cursor_is_the_first_page():
    assert decode_cursor("groups", None) is None and decode_cursor("groups", "") is None


@pytest.mark.parametrize("raw, limit", [(None, listing.DEFAULT_LIMIT), ("1", 1), ("500", 500)])
def test_a_limit_in_range_is_taken(raw, limit):
    assert listing.parse_limit(raw) == limit


@pytest.mark.parametrize("raw", ["0", "501", "-1", "ten", " 5", "٣", "1e2", "", "99999999"])
def test_a_limit_out_of_range_or_not_a_number_is_refused(raw):
    with pytest.raises(ListingError, match="limit must be a whole number from 1 to 500"):
        listing.parse_limit(raw)


def test_statuses_are_comma_separated_or_repeated_and_kept_once_each():
    assert listing.parse_statuses(["halted,ready", " halted", "active"], STATUSES) == (
        "halted", "ready", "active")
    assert listing.parse_statuses([], STATUSES) == ()
    assert listing.parse_statuses([","], STATUSES) == ()


def test_an_unknown_status_is_named_with_the_allowed_ones():
    with pytest.raises(ListingError) as refused:
        listing.parse_statuses(["halted,sleeping"], STATUSES)
    assert refused.value.location == "status"
    assert refused.value.message == ("has an unknown value 'sleeping'; allowed: active, halted, "
                                     "ready")


def test_an_unstorable_status_is_refused_without_being_repeated():
    with pytest.raises(ListingError) as refused:
        listing.parse_statuses(["a\x00b"], STATUSES)
    assert "\x00" not in refused.value.message


def test_the_name_filter_s_wildcards_are_literal():
    assert listing.like_pattern("a%b_c\\d") == "%a\\%b\\_c\\\\d%"
    assert listing.like_pattern("shop") == "%shop%"


@pytest.mark.parametrize("raw", ["x" * 201, "a\x00b", "\ud800"])
def test_a_name_filter_that_cannot_be_a_name_is_refused(raw):
    with pytest.raises(ListingError) as refused:
        listing.parse_name(raw)
    assert refused.value.location == "name"


def test_a_parameter_given_twice_is_refused():
    with pytest.raises(ListingError, match="limit is given more than once"):
        page_request("groups", {"limit": ["5", "6"]}, STATUSES)


def test_a_page_request_gathers_its_parameters():
    cursor = encode_cursor("groups", (AT, ID))
    page = page_request("groups", {"limit": ["10"], "status": ["halted"], "name": ["sh"],
                                   "cursor": [cursor]}, STATUSES)
    assert page == listing.PageRequest(limit=10, statuses=("halted",), name="sh",
                                       after=(AT, ID))
