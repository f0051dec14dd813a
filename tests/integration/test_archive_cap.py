"""The bandwidth cap per archive stream (FERRY_ARCHIVE_BANDWIDTH_BYTES_S): a capped archive
of a local tree cannot be read faster than the cap, and unpacks to the same bytes.
A correctness check of the cap, not a speed target."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from services.archiver.archive import ArchiveError, archive_path, archive_stream_cap, LocalTree

pytestmark = [pytest.mark.integration]

CAP = 1 << 20  # bytes/s
SIZE = 2 * CAP  # about 2 s at the cap


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "legacy"
    (root / "srv").mkdir(parents=True)
    # Random bytes: what is capped is the stream tar reads, before zstd compresses it.
    (root / "srv" / "data.bin").write_bytes(os.urandom(SIZE))
    return root


def unpacked(archive: Path, into: Path) -> bytes:
    into.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(archive), "-C", str(into)], check=True)
    return (into / "data.bin").read_bytes()


async def test_a_capped_stream_takes_at_least_its_size_over_the_cap(tree: Path, tmp_path: Path):
    """2 MiB at 1 MiB/s takes at least about 2 s (pv lets a tenth of a second's worth through
    at once: its rate granularity), and unpacks to the same bytes."""
    started = time.monotonic()
    with archive_stream_cap(CAP):
        result = await archive_path(LocalTree(tree), "/srv", [], tmp_path / "capped.tar.zst")
    took = time.monotonic() - started
    assert took >= (SIZE - CAP / 10) / CAP, f"{SIZE} bytes at {CAP} B/s took {took:.2f} s"
    assert unpacked(result.file, tmp_path / "out") == (tree / "srv" / "data.bin").read_bytes()


async def test_the_cap_ends_with_its_block(tree: Path, tmp_path: Path, monkeypatch):
    """Outside archive_stream_cap, or with 0, no throttle is put in the stream."""
    async def no_throttle(cap, stream):
        raise AssertionError(f"a throttle at {cap} B/s outside a cap")

    monkeypatch.setattr("services.archiver.archive._spawn_throttle", no_throttle)
    with archive_stream_cap(0):
        await archive_path(LocalTree(tree), "/srv", [], tmp_path / "zero.tar.zst")
    with archive_stream_cap(CAP):
        pass
    result = await archive_path(LocalTree(tree), "/srv", [], tmp_path / "plain.tar.zst")
    assert unpacked(result.file, tmp_path / "out") == (tree / "srv" / "data.bin").read_bytes()


async def test_a_missing_pv_is_an_archive_error_naming_it(tree: Path, tmp_path: Path,
                                                          monkeypatch):
    """Without pv on the PATH a capped archive fails, naming pv; no partial file is left."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr("services.archiver.archive._dies_with_us", lambda: ())
    dest = tmp_path / "out" / "capped.tar.zst"
    with archive_stream_cap(CAP), pytest.raises(ArchiveError, match="cannot run pv"):
        await archive_path(LocalTree(tree), "/srv", [], dest)
    assert list(dest.parent.glob("*")) == []
