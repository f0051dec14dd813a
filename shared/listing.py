"""Listings at fleet scale (groups, VMs): what a page asks for, checked, and the opaque cursor
that says where the next page starts. Plain functions without I/O; the store runs the queries
(shared/store/views.py), the gateway turns ListingError into a 400.

A page is keyset-paginated on a stable order (groups: newest first by (created_at, id); VMs:
newest group first, then by group and plan position), so rows added between two pages never
shift the rows still to come: no row is listed twice and none is skipped. The cursor is the
last listed row's key, base64url-encoded JSON with the listing's kind; clients pass it back
as they got it."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from shared.plan_errors import storable

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_NAME = 200  # a name filter longer than any name is a mistake, not a search
_WHOLE_NUMBER = re.compile(r"[0-9]{1,6}")  # int() would take "٣" and " 3 "


class Serial(int):
    """A key that is a bigserial id (the audit trail's lines, newest first)."""


_KEYS = {"groups": (datetime, uuid.UUID), "vms": (datetime, uuid.UUID, int), "audit": (Serial,)}


class ListingError(ValueError):
    """A listing's parameter that cannot be used: which one, and what it must be."""

    def __init__(self, location: str, message: str):
        super().__init__(f"{location} {message}")
        self.location = location
        self.message = message


@dataclass(frozen=True)
class PageRequest:
    limit: int
    statuses: tuple[str, ...]  # empty: any
    name: str | None  # a case-insensitive substring of the name
    after: tuple | None  # the key of the last row already listed


def page_request(kind: str, query: dict[str, list[str]], allowed: Iterable[str]) -> PageRequest:
    """The page that a listing's query string asks for. `query`: each parameter's values (a
    parameter may be repeated); `allowed`: the statuses that exist. Raises ListingError."""
    return PageRequest(
        limit=parse_limit(_one(query, "limit")),
        statuses=parse_statuses(query.get("status", []), allowed),
        name=parse_name(_one(query, "name")),
        after=decode_cursor(kind, _one(query, "cursor")),
    )


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name, [])
    if len(values) > 1:
        raise ListingError(name, "is given more than once")
    return values[0] if values else None


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not _WHOLE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ListingError("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def parse_statuses(values: list[str], allowed: Iterable[str]) -> tuple[str, ...]:
    """One or several statuses, repeated (status=a&status=b) or comma-separated (status=a,b)."""
    allowed = sorted(allowed)
    wanted = [part.strip() for value in values for part in value.split(",") if part.strip()]
    unknown = [s for s in wanted if s not in allowed]
    if unknown:
        shown = ", ".join(repr(s) for s in unknown[:5] if storable(s))
        raise ListingError("status", f"has an unknown value{'s' if len(unknown) > 1 else ''}"
                           f"{' ' + shown if shown else ''}; allowed: {', '.join(allowed)}")
    return tuple(dict.fromkeys(wanted))


def parse_name(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if not storable(raw) or len(raw) > MAX_NAME:
        raise ListingError("name", f"must be text of at most {MAX_NAME} characters, "
                           "without NUL characters or unpaired surrogates")
    return raw


def like_pattern(name: str) -> str:
    """A LIKE pattern (ESCAPE '\\') matching `name` anywhere: its own % and _ are literal."""
    escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def encode_cursor(kind: str, key: tuple) -> str:
    values = [v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID)
              else v for v in key]
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def next_cursor(kind: str, rows: list, limit: int, key) -> str | None:
    """The cursor after a page's last row, when the store found one row more than fits (it is
    asked for limit + 1 rows: the extra one only says that there is a next page)."""
    return encode_cursor(kind, key(rows[limit - 1])) if len(rows) > limit else None


def decode_cursor(kind: str, raw: str | None) -> tuple | None:
    """The key a cursor holds; raises ListingError for one this listing never gave."""
    if raw is None or raw == "":
        return None
    bad = ListingError("cursor", f"is not a cursor of this listing ({kind}): pass next_cursor "
                       "as a previous page gave it, or leave it out for the first page")
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        decoded = json.loads(text)
    except (binascii.Error, ValueError, UnicodeError):
        raise bad from None
    types = _KEYS[kind]
    if not isinstance(decoded, list) or decoded[:1] != [kind] or len(decoded) != len(types) + 1:
        raise bad
    try:
        return tuple(_value(t, v) for t, v in zip(types, decoded[1:]))
    except (TypeError, ValueError, AttributeError):
        raise bad from None


def _value(kind: type, value):
    if kind is datetime:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("a cursor's time has its offset")
        return parsed
    if kind is uuid.UUID:
        return uuid.UUID(value)
    if kind is Serial:
        if type(value) is not int or not 0 < value < 2**63:  # noqa: E721 (a bool is no id)
            raise ValueError("an id is a whole number")
        return value
    if type(value) is not int or not 0 <= value < 2**31:  # noqa: E721 (a bool is no position)
        raise ValueError("a position is a whole number")
    return value
