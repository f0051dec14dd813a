"""The in-memory store (tests/unit/fakes.py) offers what the real one does, with the same
signatures, so a handler test cannot pass on a method the store lacks."""

from __future__ import annotations

import inspect

import pytest

from shared.store import session
from tests.unit import fakes

REPOSITORIES = ["groups", "vms", "transitions", "messages", "archives", "scripts", "tokens",
                "cutover_runs", "cutover_steps", "inbox", "limits", "host_keys"]


def _methods(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in inspect.getmembers(cls)
            if not name.startswith("_") and inspect.iscoroutinefunction(fn)}


@pytest.mark.parametrize("name", REPOSITORIES)
def test_each_fake_repository_has_the_real_ones_methods_and_signatures(name):
    real = session.Session.__dict__[name].func.__annotations__["return"]
    real_cls = getattr(inspect.getmodule(session), real)
    fake_cls = type(getattr(fakes.FakeSession(fakes.FakeStore()), name))
    assert _methods(fake_cls) == _methods(real_cls)


def test_every_repository_of_a_session_has_a_fake_except_the_read_side():
    """The views and the outbox are read by the API and the relay only, retention is the
    pruner's, deadlines the watchdog's, operator tokens and the audit trail the gateway's:
    never by handlers."""
    real = {n for n, v in vars(session.Session).items() if hasattr(v, "func")}
    assert real - set(REPOSITORIES) == {"views", "outbox", "retention", "deadlines",
                                        "operator_tokens", "audit"}
