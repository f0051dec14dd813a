"""The legacy hosts' root folders: the host's image unpacked (the base image unless site.yaml
names another), the host's overlay from
examples/legacy/<host>/ on top, generated assets, and the little the lab itself configures
(sshd by key only, /etc/hosts of the site).

A root is rebuilt only when its inputs change (its image, the overlay, the site table, or
this recipe), told by a stamp holding their hashes; otherwise it is reused as it is, the
changes of earlier runs included, as a live host would be. Never while anything is mounted
below it (lab-notes pitfall 8): `rm --one-file-system` and a mount check guard that.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from lab.legacy import assets
from lab.legacy.config import SITE_FILE, HostSpec, SiteSpec
from lab.legacy.mounts import mounts_below

# Written into every root: a legacy host that takes root logins by key only. UsePAM no: Debian's
# PAM stack for sshd wants systemd-logind and the audit loginuid, which a chroot has not.
SSHD_CONFIG = """\
# Written by Ferryman's lab (lab/legacy): root by key only.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
"""


class BuildError(Exception):
    pass


def state_dir(lab_dir: Path) -> Path:
    """The site's bookkeeping beside the roots: stamps, host keys, pidfiles, logs."""
    return lab_dir / "legacy" / ".state"


def root_of(lab_dir: Path, host: str) -> Path:
    return lab_dir / "legacy" / host


def image_of(images_dir: Path, host: HostSpec) -> Path:
    """The root image the host is made from, in the lab's images folder."""
    return images_dir / host.image


def stamp_of(lab_dir: Path, host: HostSpec, image: Path) -> dict[str, str]:
    """What a root is made of; a root whose stamp differs is rebuilt."""
    here = Path(__file__).parent
    return {
        "image": f"{image.name} {_image_identity(image)}",
        "overlay": _tree_hash(host.overlay),
        "site": _file_hash(SITE_FILE),
        "recipe": _file_hash(here / "roots.py") + _file_hash(here / "assets.py"),
    }


def is_current(lab_dir: Path, host: HostSpec, image: Path) -> bool:
    stamp = state_dir(lab_dir) / f"{host.name}.stamp"
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return recorded == stamp_of(lab_dir, host, image) and root_of(lab_dir, host.name).is_dir()


def build(lab_dir: Path, site: SiteSpec, host: HostSpec, image: Path) -> None:
    """Make the host's root from scratch (blocking: run it in a thread)."""
    root = root_of(lab_dir, host.name)
    stamp = state_dir(lab_dir) / f"{host.name}.stamp"
    stamp.unlink(missing_ok=True)
    partial = root.with_name(f".{host.name}.partial")
    for old in (root, partial):
        _remove(old)
    partial.mkdir(parents=True)
    _unpack(image, partial)
    _overlay(host.overlay, partial)
    if host.assets:
        assets.generate(partial / host.assets.lstrip("/"))
    _configure(site, host, partial)
    partial.rename(root)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(stamp_of(lab_dir, host, image), indent=1))


def remove(lab_dir: Path, host: str) -> None:
    _remove(root_of(lab_dir, host))
    (state_dir(lab_dir) / f"{host}.stamp").unlink(missing_ok=True)


def _remove(root: Path) -> None:
    if not root.exists():
        return
    busy = mounts_below(root)
    if busy:
        raise BuildError(f"refusing to remove {root}: still mounted below it: {busy}")
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(root)], check=True)


def _unpack(image: Path, root: Path) -> None:
    # --numeric-owner: ids as in the image, whatever this machine's /etc/passwd says. No
    # --acls (lab-notes pitfall 2); xattrs kept (file capabilities such as ping's).
    zstd = subprocess.Popen(["zstd", "-dc", "--", str(image)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "--file=-", f"--directory={root}", "--numeric-owner",
                          "--same-permissions", "--xattrs", "--xattrs-include=*"],
                         stdin=zstd.stdout, capture_output=True, text=True)
    zstd.stdout.close()
    if zstd.wait() != 0 or tar.returncode != 0:
        raise BuildError(f"unpacking {image} failed: {tar.stderr.strip()[-2000:]}")


def _overlay(overlay: Path, root: Path) -> None:
    """Copy the host's example tree over the root, owned by root.

    Done by hand rather than with cp or tar, which follow a symlink already in the root: the
    image's /etc/mysql/my.cnf is an absolute link to /etc/alternatives/my.cnf, and written
    through from outside the chroot that would be *this machine's* file. Here a link in the way
    is replaced, and a path whose parent leaves the root is refused."""
    real_root = os.path.realpath(root)
    for folder, dirs, files in os.walk(overlay):
        relative = Path(folder).relative_to(overlay)
        target_dir = root / relative
        if relative != Path("."):
            # Walking top-down, the parent was made a real directory just before; checked
            # all the same, as the one thing that must never happen is a write outside.
            parent = os.path.realpath(target_dir.parent)
            if parent != real_root and not parent.startswith(real_root + os.sep):
                raise BuildError(f"overlay path {relative} leaves the root {root}")
            if target_dir.is_symlink():
                target_dir.unlink()
            target_dir.mkdir(exist_ok=True)
        for name in dirs:
            if (Path(folder) / name).is_symlink():
                files.append(name)  # os.walk lists a link to a directory among dirs
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
        for name in files:
            source, target = Path(folder) / name, target_dir / name
            if target.is_symlink() or target.is_file():
                target.unlink()
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            else:
                shutil.copyfile(source, target, follow_symlinks=False)
                target.chmod(source.stat().st_mode & 0o7777)
            if os.geteuid() == 0:  # always in the lab; a unit test may run as anyone
                os.lchown(target, 0, 0)


def _configure(site: SiteSpec, host: HostSpec, root: Path) -> None:
    conf = root / "etc/ssh/sshd_config.d/ferry-lab.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(SSHD_CONFIG)
    names = "".join(f"{h.address}\t{h.name}\n" for h in site.hosts.values())
    (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
                                    f"{names}")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    ssh_dir.chmod(0o700)
    # netplan wants its files readable by root only, as its installers write them (git keeps
    # only 644 or 755 for the overlay's copy).
    for config in (root / "etc/netplan").glob("*.yaml"):
        config.chmod(0o600)


def _image_identity(image: Path) -> str:
    """The image's sha256 from the build's manifest (hashing 144 MB on every `up` would cost
    a second), else its size and mtime."""
    manifest = image.parent / "manifest.txt"
    try:
        for line in manifest.read_text().splitlines():
            if line.startswith(f"sha256_{image.name}="):
                return line.split("=", 1)[1]
    except OSError:
        pass
    st = image.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            digest.update(f"L {relative} {os.readlink(path)}\n".encode())
        elif path.is_file():
            digest.update(f"F {relative} {path.stat().st_mode & 0o7777:o} "
                          f"{_file_hash(path)}\n".encode())
        elif path.is_dir():
            digest.update(f"D {relative}\n".encode())
    return digest.hexdigest()


def _file_hash(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
