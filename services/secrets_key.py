"""Rotate the secrets key (docs/security.md, docs/operations.md):

    python -m services.secrets_key rotate

with the same FERRY_* settings as the gateway (the database, FERRY_DATABASE_SCHEMA, and
FERRY_SECRETS_KEY_FILE or FERRY_STATE_DIR). It adds a new key in front of the key file,
re-seals every sealed value of the store with it in one transaction, then drops the old keys,
and says how many values it re-sealed. The gateway may keep running: it re-reads the key file
when the file changes. Safe to run again, after a crash too. Exit 0 when done, 1 with the
reason when not (nothing lost: the old keys stay until every value opens with the new one),
2 for a bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from shared.secrets_key import SecretsKeyError
from shared.settings import Settings
from shared.store.sealed import rotate


def counted(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.secrets_key",
                                     description="The store's secrets key.")
    parser.add_argument("command", choices=["rotate"],
                        help="rotate: a new key, every sealed value re-sealed, old keys dropped")
    parser.parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError: a FERRY_* value it cannot read
        print(f"the FERRY_* settings are not valid: {exc}", file=sys.stderr)
        return 2
    try:
        done = asyncio.run(rotate(settings))
    except (SecretsKeyError, OSError, asyncpg.PostgresError) as exc:
        print(f"rotation failed: {exc}", file=sys.stderr)
        return 1
    found = f", {counted(done.sealed_clear, 'value')} found in clear and sealed"
    print(f"{settings.secrets_key_path}: new key; {counted(done.resealed, 'value')} re-sealed"
          f" with it{found if done.sealed_clear else ''};"
          f" {counted(done.keys_dropped, 'old key')} dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
