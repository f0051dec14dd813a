"""The secrets key file and sealing (shared/secrets_key.py), without a database."""

from __future__ import annotations

import os
import re
import stat

import pytest
from cryptography.fernet import Fernet

from shared.plan import Plan
from shared.secrets_key import SecretsKey, SecretsKeyError, make_key_file, read_keys, write_keys

PASSWORD = "Zq3-replication-secret-7781"


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_key_file_is_made_once_readable_by_its_owner_only_whatever_the_umask(tmp_path):
    """Made with one key, mode 0600 under umask 0; a second call keeps the first key."""
    path = tmp_path / "state" / "secrets.key"
    before = os.umask(0)
    try:
        assert make_key_file(path) is True
        first = read_keys(path)
        assert make_key_file(path) is False
    finally:
        os.umask(before)
    assert mode(path) == 0o600 and len(first) == 1 and read_keys(path) == first
    assert [p.name for p in path.parent.iterdir()] == ["secrets.key"]  # no temporary left


def test_a_sealed_value_opens_again_and_shows_nothing_of_itself(tmp_path):
    path = tmp_path / "secrets.key"
    make_key_file(path)
    key = SecretsKey(path)
    sealed = key.seal(PASSWORD)
    assert PASSWORD not in sealed and PASSWORD.encode().hex() not in sealed
    assert sealed != key.seal(PASSWORD)  # a fresh IV each time
    assert key.unseal(sealed) == PASSWORD


def test_a_value_sealed_with_a_key_the_file_lacks_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "secrets.key"
    write_keys(path, [Fernet.generate_key()])
    sealed = SecretsKey(path).seal(PASSWORD)
    write_keys(path, [Fernet.generate_key()])
    with pytest.raises(SecretsKeyError) as caught:
        SecretsKey(path).unseal(sealed, what="group 7's replication password")
    said = str(caught.value)
    assert str(path) in said and "group 7's replication password" in said
    assert sealed not in said and PASSWORD not in said
    altered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    write_keys(path, read_keys(path))
    with pytest.raises(SecretsKeyError, match="does not hold"):
        SecretsKey(path).unseal(altered)


@pytest.mark.parametrize("text, said", [
    (None, "does not exist"),
    ("", "holds no key"),
    ("# only a comment\n\n", "holds no key"),
    ("# header\nnot-a-key\n", "line 2: not a Fernet key"),
    (b"\xff\xfe garbage", "cannot be read"),
])
def test_a_missing_or_garbled_key_file_is_an_error_naming_it_and_never_clear_text(
        tmp_path, text, said):
    path = tmp_path / "secrets.key"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    key = SecretsKey(path)
    for use in (lambda: key.seal(PASSWORD), lambda: key.unseal("gAAAAA")):
        with pytest.raises(SecretsKeyError, match=said) as caught:
            use()
        assert str(path) in str(caught.value)


def test_a_new_key_in_front_seals_from_then_on_and_old_values_still_open(tmp_path):
    """The rotation's steps on the file: the same SecretsKey follows the file as it changes;
    reseal moves a value to the newest key, and leaves one already there alone."""
    path = tmp_path / "secrets.key"
    old = Fernet.generate_key()
    write_keys(path, [old])
    key = SecretsKey(path)
    under_old = key.seal(PASSWORD)
    new = Fernet.generate_key()
    write_keys(path, [new, old])
    assert mode(path) == 0o600 and key.keys == [new, old]
    assert key.unseal(under_old) == PASSWORD
    under_new = key.reseal(under_old)
    assert under_new is not None and Fernet(new).decrypt(under_new.encode()) == PASSWORD.encode()
    assert key.reseal(under_new) is None and key.reseal(key.seal(PASSWORD)) is None
    write_keys(path, [new])
    assert key.unseal(under_new) == PASSWORD
    with pytest.raises(SecretsKeyError, match="does not hold"):
        key.unseal(under_old)
    with pytest.raises(SecretsKeyError, match="does not hold"):
        key.reseal(under_old)


def secret_like_fields(schema: dict) -> dict[str, dict]:
    """Every property of the plan's JSON schema (its definitions included) whose name says it
    holds a secret, by `Model.field`."""
    found = {}
    for model, definition in {"Plan": schema, **schema.get("$defs", {})}.items():
        for name, field in definition.get("properties", {}).items():
            if SECRET_WORDS.search(name):
                found[f"{model}.{name}"] = field
    return found


SECRET_WORDS = re.compile(r"pass|secret|token|credential|private", re.IGNORECASE)


def test_the_stored_plan_carries_no_secret_only_names_of_variables_holding_them():
    """The plan is stored whole (groups.plan), so it must hold no secret to seal: every field
    whose name says secret is the NAME of an environment variable (`*_env`, an identifier
    pattern). A field that could carry a password itself fails here, and then belongs sealed
    (shared/store/sealed.py)."""
    fields = secret_like_fields(Plan.model_json_schema())
    assert "DatabaseSpec.password_env" in fields  # the search finds what is there
    for name, field in fields.items():
        variants = field.get("anyOf", [field])
        assert name.endswith("_env") and all(
            v.get("type") == "null" or v.get("pattern", "").startswith("^[A-Za-z_]")
            for v in variants), f"{name} could hold a secret in the stored plan: {field}"
