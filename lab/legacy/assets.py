"""The shared assets of the example app server's /data: a few hundred files, generated rather
than kept in git (binary blobs in the repository would be noise), the same bytes every time
(a seeded generator), so archives of an unchanged host compare equal run after run.

What the tree has, because an archiver must get each right: binary (incompressible) and text
files, sizes from 0 bytes to a few MiB, names with spaces, parentheses, quotes and non-ASCII
letters, a symlink, a hard link, an empty directory, deep directories, files owned by the web
server's user, and the junk the plan excludes (shared/tmp/*, sessions/*).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

SEED = 20240301
WWW_DATA = 33  # uid and gid of www-data on Debian

DOC_NAMES = [
    "Price list 2024.csv", "Terms and conditions.txt", "café menu.txt", "Q3 report (final).csv",
    "Shipping rates – EU.txt", "it's a quote.txt", "notes  with  two  spaces.txt",
]


def generate(data: Path) -> int:
    """Write the assets below `data` (the host's /data); returns how many files."""
    rng = random.Random(SEED)
    count = 0

    def write(relative: str, content: bytes, owner: int | None = None) -> None:
        nonlocal count
        path = data / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o644)
        if owner is not None and os.geteuid() == 0:
            os.chown(path, owner, owner)
        count += 1

    for n in range(1, 121):  # product photos: incompressible, 1 KiB .. 256 KiB
        write(f"shared/images/products/product-{n:03d}.jpg",
              rng.randbytes(int(1024 * 2 ** rng.uniform(0, 8))), WWW_DATA)
    for n in range(1, 121):  # thumbnails: small binaries, some empty-ish
        write(f"shared/images/thumbs/product-{n:03d}.png", rng.randbytes(rng.randrange(0, 8192)),
              WWW_DATA)
    for n in range(1, 31):  # catalogues: compressible text
        rows = [f"{i};product-{i:03d};{rng.randrange(100, 99999)}" for i in range(1, 40 * n)]
        write(f"shared/downloads/catalog-{n:02d}.csv", ("\n".join(rows) + "\n").encode())
    for name in DOC_NAMES:
        write(f"shared/docs/{name}", f"{name}\n{'lorem ipsum ' * rng.randrange(1, 400)}\n".encode())
    write("shared/docs/deep/er/and/deeper/still/leaf.txt", b"a leaf five levels down\n")
    write("shared/media/intro video.bin", rng.randbytes(3 << 20))  # the one big file
    write("shared/media/empty.dat", b"")
    (data / "shared/media/uploads-pending").mkdir(parents=True, exist_ok=True)  # empty dir
    _replace_link(data / "shared/downloads/latest.csv", "catalog-30.csv")
    hard = data / "shared/docs/terms.txt"
    hard.unlink(missing_ok=True)
    os.link(data / "shared/docs/Terms and conditions.txt", hard)
    # What the plan excludes: cache files and PHP sessions.
    for n in range(1, 21):
        write(f"shared/tmp/cache-{n:02d}.tmp", rng.randbytes(rng.randrange(1, 4096)), WWW_DATA)
    for n in range(1, 31):
        write(f"sessions/sess_{rng.getrandbits(64):016x}", f"cart|i:{n};".encode(), WWW_DATA)
    return count


def _replace_link(link: Path, target: str) -> None:
    link.unlink(missing_ok=True)
    link.symlink_to(target)
