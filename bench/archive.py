"""The archiver's tar | zstd against the plain pipes, on the same generated tree.

The tree (`--size-mb`, 1 GiB by default) is generated once under /tmp/ferry-bench-tree/data
and reused while its size matches: mixed file sizes (many small files, some medium, a few
large), about half of the bytes random (incompressible) and half text-like (compressible).
Timed, one after the other and after one warm-up read (so all read from the page cache):
`archive_path(LocalTree, ...)` (what the archiver runs: GNU tar with --sort=name, --sparse,
ACLs and xattrs, zstd -T0 -3, sha256 and fsync of the output), `tar -c | zstd -T0 -3` and
`tar -czf`. MB/s are of input (tree) bytes; ratios are against the `tar | zstd` pipe.

    .venv/bin/python -m bench.archive --size-mb 1024
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import append_row, finish, now_stamp, plot_path, pyplot
from services.archiver.archive import ZSTD, LocalTree, archive_path

TREE = Path("/tmp/ferry-bench-tree")
OUT = Path("/tmp/ferry-bench-archive-out")
TEXT = (b"2026-11-25T10:00:00Z app1 nginx: GET /shop/cart?id=1234 200 5123 \"Mozilla/5.0\"\n"
        b"<div class=\"product\"><span>Item</span><a href=\"/buy\">buy</a></div>\n") * 64


def _content(rng: random.Random, size: int) -> bytes:
    """Half random, half text-like, in 64 KiB pieces."""
    out = bytearray()
    while len(out) < size:
        piece = min(65536, size - len(out))
        if rng.random() < 0.5:
            out += rng.randbytes(piece)
        else:
            start = rng.randrange(len(TEXT) - 1)
            chunk = (TEXT[start:] + TEXT) * (piece // len(TEXT) + 2)
            out += chunk[:piece]
    return bytes(out)


def generate(size_mb: int, root: Path = TREE) -> tuple[Path, int, int]:
    """The tree for `size_mb` under `root`, made unless already there; returns (dir, bytes,
    files)."""
    data = root / "data"
    marker = root / "tree.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        if meta.get("size_mb") == size_mb and data.is_dir():
            return data, meta["bytes"], meta["files"]
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(1234)
    target = size_mb * 1024 * 1024
    total = files = 0
    # By bytes: ~10% in small files (1-16 KiB), ~30% medium (64 KiB-1 MiB), ~60% large (4-64 MiB).
    for share, lo, hi in ((0.1, 1024, 16384), (0.3, 65536, 1 << 20), (0.6, 4 << 20, 64 << 20)):
        budget = int(target * share)
        while budget > 0:
            size = min(rng.randint(lo, hi), budget)
            folder = data / f"d{files // 200:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{files:06d}.dat").write_bytes(_content(rng, size))
            budget -= size
            total += size
            files += 1
    marker.write_text(json.dumps({"size_mb": size_mb, "bytes": total, "files": files}))
    return data, total, files


def _timed_shell(cmd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    return time.perf_counter() - t0


async def _timed_archiver(data: Path, dest: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    result = await archive_path(LocalTree(data.parent), "/" + data.name, [], dest)
    return time.perf_counter() - t0, result.size


def measure(size_mb: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    data, total, files = generate(size_mb)
    generated_s = time.perf_counter() - t0
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        _timed_shell(f"tar -cf - -C {data} . > /dev/null")  # warm the page cache
        runs: dict[str, list[float]] = {"archiver": [], "archiver_argv_pipe": [],
                                        "tar_zstd": [], "tar_gz": []}
        sizes = {}
        # The archiver's own tar and zstd command lines in a plain shell pipe (no Python in the
        # stream, no sha256, no fsync): what separates the archiver from `tar | zstd` is then
        # split between its tar options and its Python side.
        own = (shlex.join(LocalTree(data.parent).tar_command("/" + data.name, []))
               + " | " + shlex.join(ZSTD) + f" > {OUT}/own.tar.zst")
        for _ in range(repeats):
            elapsed, sizes["archiver"] = asyncio.run(_timed_archiver(data, OUT / "archiver.tar.zst"))
            runs["archiver"].append(elapsed)
            runs["archiver_argv_pipe"].append(_timed_shell(own))
            sizes["archiver_argv_pipe"] = (OUT / "own.tar.zst").stat().st_size
            runs["tar_zstd"].append(_timed_shell(
                f"tar -cf - -C {data} . | zstd -T0 -3 -q -c > {OUT}/pipe.tar.zst"))
            sizes["tar_zstd"] = (OUT / "pipe.tar.zst").stat().st_size
            runs["tar_gz"].append(_timed_shell(f"tar -czf {OUT}/pipe.tar.gz -C {data} ."))
            sizes["tar_gz"] = (OUT / "pipe.tar.gz").stat().st_size
    finally:
        shutil.rmtree(OUT, ignore_errors=True)
    best = {k: min(v) for k, v in runs.items()}
    mbps = {k: total / 1e6 / s for k, s in best.items()}
    return {"size_mb": size_mb, "bytes": total, "files": files, "generated_s": generated_s,
            "repeats": repeats, "seconds": runs, "best_s": best, "mb_per_s": mbps,
            "output_bytes": sizes,
            "compression_ratio": {k: total / v for k, v in sizes.items()},
            "ratio_archiver_to_tar_zstd": mbps["archiver"] / mbps["tar_zstd"],
            "ratio_archiver_argv_pipe_to_tar_zstd": mbps["archiver_argv_pipe"] / mbps["tar_zstd"],
            "ratio_tar_gz_to_tar_zstd": mbps["tar_gz"] / mbps["tar_zstd"]}


def report(run: dict, started: str) -> None:
    m = run["mb_per_s"]
    append_row("archive", ["date (UTC)", "tree MB", "files", "archiver MB/s", "tar|zstd MB/s",
                           "tar -czf MB/s", "archiver/tar|zstd", "archiver argv in sh/tar|zstd",
                           "tar -czf/tar|zstd"],
               [started, round(run["bytes"] / 1e6), run["files"], m["archiver"], m["tar_zstd"],
                m["tar_gz"], run["ratio_archiver_to_tar_zstd"],
                run["ratio_archiver_argv_pipe_to_tar_zstd"], run["ratio_tar_gz_to_tar_zstd"]])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["archiver", "archiver_argv_pipe", "tar_zstd", "tar_gz"]
    ax.bar(["archive_path", "its argv in sh", "tar | zstd -T0", "tar -czf"],
           [m[n] for n in names], color=["#48c", "#8ac", "#aaa", "#ccc"])
    ax.axhline(0.9 * m["tar_zstd"], color="grey", ls=":", lw=0.8, label="0.9 × tar | zstd")
    ax.set_ylabel("MB/s of input"), ax.legend(fontsize=7)
    ax.set_title(f"{run['bytes'] / 1e6:.0f} MB, {run['files']} files (best of {run['repeats']})")
    fig.tight_layout()
    fig.savefig(plot_path("archive"), dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many, each way")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    started = now_stamp()
    run = measure(args.size_mb, args.repeats)
    print(json.dumps(run, default=str), flush=True)
    return finish("archive", args, started, [run], lambda: report(run, started))


if __name__ == "__main__":
    main()
