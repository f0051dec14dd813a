"""MANIFEST.sha256 beside a VM's archives, in `sha256sum` format, so both Ferryman and a person
with `sha256sum -c MANIFEST.sha256` can check the folder."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath

from services.archiver.archive import ArchiveResult

MANIFEST = "MANIFEST.sha256"
_LINE = re.compile(r"^(?P<sha>[0-9a-f]{64}) [ *](?P<name>.+)$")


def write_manifest(results: list[ArchiveResult], dest_dir: Path) -> Path:
    """Write (atomically) the manifest of `results`, whose files must lie in `dest_dir`."""
    # Sorted by file name, so the manifest reads the same whatever the hashes are.
    named = sorted((_relative_name(r.file, dest_dir), r.sha256) for r in results)
    lines = [f"{sha256}  {name}\n" for name, sha256 in named]
    path = dest_dir / MANIFEST
    partial = dest_dir / (MANIFEST + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)  # a full store keeps no half manifest
        raise
    return path


def verify_manifest(dest_dir: Path) -> list[str]:
    """Problems with the folder's archives against its manifest; empty when all is well."""
    path = dest_dir / MANIFEST
    if not path.is_file():
        return [f"{MANIFEST} is missing in {dest_dir}"]
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = _LINE.match(line)
        if match is None:
            problems.append(f"{MANIFEST} line {number} is not '<sha256>  <file>'")
            continue
        problem = _check(dest_dir, match["name"], match["sha"])
        if problem:
            problems.append(problem)
    return problems


def _relative_name(file: Path, dest_dir: Path) -> str:
    name = file.resolve().relative_to(dest_dir.resolve()).as_posix()
    # sha256sum escapes these with a leading backslash; our archive names never have them.
    if "\n" in name or "\\" in name:
        raise ValueError(f"{file}: a name with a newline or backslash cannot go in {MANIFEST}")
    return name


def _check(dest_dir: Path, name: str, expected: str) -> str | None:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        return f"{name}: not a file inside {dest_dir}"
    file = dest_dir / relative
    if not file.is_file():
        return f"{name}: missing"
    actual = _sha256(file)
    if actual != expected:
        return f"{name}: sha256 mismatch (manifest {expected}, file {actual})"
    return None


def _sha256(file: Path) -> str:
    with file.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
