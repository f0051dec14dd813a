"""The chaos suite's private servers: a PostgreSQL cluster and a RabbitMQ node of its own (see
infra.py), torn down at the end of the test, failed or not."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.chaos.infra import PG_BIN, RABBIT_BIN, PrivatePostgres, PrivateRabbit


@pytest.fixture
def chaos_dir():
    # Under /tmp itself (not pytest's 0700 tmp_path): the postgres OS user must reach it.
    folder = Path(tempfile.mkdtemp(prefix="ferry-chaos-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def private_postgres(chaos_dir):
    if PG_BIN is None:
        pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin "
                    "(apt-get install postgresql)")
    pg = PrivatePostgres(chaos_dir / "pg")
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def private_rabbit(chaos_dir):
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        pytest.skip(f"no RabbitMQ server in {RABBIT_BIN}")
    rabbit = PrivateRabbit(chaos_dir / "rabbit", f"ferry-chaos-{uuid.uuid4().hex[:8]}")
    try:
        rabbit.init()
        rabbit.start()
        yield rabbit
    finally:
        rabbit.destroy()
