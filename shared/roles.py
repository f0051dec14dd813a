"""Operator roles: each operator token has one, each operator route needs one, and a higher
role can do whatever a lower one can (viewer < operator < admin)."""

from __future__ import annotations

import re
from typing import Literal

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")  # lowest first

# The configured operator token (FERRY_OPERATOR_TOKEN or the state dir's operator-token): the
# admin that makes the named tokens. Its name is reserved so no stored token can take it.
BOOTSTRAP = "bootstrap"
BOOTSTRAP_ROLE: Role = "admin"

# A token's name: shown in audit lines and log lines, typed on command lines.
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def allows(held: str, needed: str) -> bool:
    """Whether a token with role `held` may use a route that needs role `needed`."""
    if held not in ROLES or needed not in ROLES:
        raise ValueError(f"unknown role: {held if held not in ROLES else needed!r}")
    return ROLES.index(held) >= ROLES.index(needed)


def is_action(needed: str) -> bool:
    """An action is what needs more than the viewer role: it is audited."""
    return ROLES.index(needed) > 0
