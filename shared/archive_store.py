"""Where the archive store keeps its files: one folder per group (its id), one per VM (its name)
inside it, each archive and dump a file named by its id, beside the VM's MANIFEST.sha256. The
archiver writes them (and records each in the `archives` table); a cancelled or finalized group
has them removed.

Removal is safe to repeat: what is already gone is fine.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Iterable


def group_folder(root: Path, group_id: uuid.UUID) -> Path:
    return root / str(group_id)


def vm_folder(root: Path, group_id: uuid.UUID, vm_name: str) -> Path:
    return group_folder(root, group_id) / vm_name


def remove_group(root: Path, group_id: uuid.UUID, files: Iterable[str]) -> None:
    """Remove the group's archives: the files its records name (an archive root changed since
    they were taken leaves them elsewhere), then its whole folder, partial files included."""
    for file in files:
        Path(file).unlink(missing_ok=True)
    shutil.rmtree(group_folder(root, group_id), ignore_errors=True)


def remove_vm(root: Path, group_id: uuid.UUID, vm_name: str) -> None:
    """Remove one VM's folder, and its group's folder if that leaves it empty."""
    shutil.rmtree(vm_folder(root, group_id, vm_name), ignore_errors=True)
    try:
        group_folder(root, group_id).rmdir()
    except OSError:
        pass  # other VMs' archives are there, or it is gone already


def free_bytes(folder: Path) -> int:
    """Space left for an unprivileged writer on the filesystem holding `folder` (or its
    nearest existing parent), as `df` shows it."""
    for candidate in (folder, *folder.parents):
        try:
            stats = shutil.disk_usage(candidate)
        except OSError:
            continue
        return stats.free
    return 0
