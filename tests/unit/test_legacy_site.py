"""The lab's legacy site, the parts that need neither root nor images: the site table, the
overlay copy that must never write outside a host's root, the generated assets."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from lab.legacy import assets, roots
from lab.legacy.config import load_site
from lab.legacy.mounts import _unescape


def test_the_site_table_gives_each_host_an_address_namespace_and_link():
    """examples/legacy/site.yaml: three hosts on 10.213.0.0/24, the uplink .254, interface
    names short enough for the kernel (15 characters)."""
    site = load_site()
    assert site.network == ipaddress.IPv4Network("10.213.0.0/24")
    assert str(site.uplink) == "10.213.0.254"
    assert {n: str(h.address) for n, h in site.hosts.items()} == {
        "app1": "10.213.0.11", "db1": "10.213.0.12", "db2": "10.213.0.13"}
    assert site.hosts["db1"].seed.sql.name == "shop.sql"
    assert all(len(h.site_link) <= 15 and len(h.namespace) <= 64 for h in site.hosts.values())


def test_the_overlay_replaces_links_in_the_root_and_never_writes_through_them(tmp_path: Path):
    """The base image's /etc/mysql/my.cnf is an absolute symlink: an overlay file of that name
    replaces the link inside the root, and the link's target outside is left untouched; a
    directory symlink in the way is replaced by a real directory."""
    outside = tmp_path / "this-machine.cnf"
    outside.write_text("this machine's own file\n")
    root = tmp_path / "root"
    (root / "etc/mysql").mkdir(parents=True)
    (root / "etc/mysql/my.cnf").symlink_to(outside)
    (root / "var").mkdir()
    (root / "var/www").symlink_to(tmp_path)  # a directory link leaving the root
    overlay = tmp_path / "overlay"
    (overlay / "etc/mysql").mkdir(parents=True)
    (overlay / "etc/mysql/my.cnf").write_text("[mysqld]\n")
    (overlay / "var/www/shop").mkdir(parents=True)
    (overlay / "var/www/shop/index.html").write_text("<h1>shop</h1>\n")
    (overlay / "var/www/shop/index.html").chmod(0o640)
    (overlay / "current").symlink_to("var/www/shop")
    roots._overlay(overlay, root)
    assert outside.read_text() == "this machine's own file\n"
    assert not (root / "etc/mysql/my.cnf").is_symlink()
    assert (root / "etc/mysql/my.cnf").read_text() == "[mysqld]\n"
    assert not (root / "var/www").is_symlink() and not (tmp_path / "shop").exists()
    assert (root / "var/www/shop/index.html").stat().st_mode & 0o777 == 0o640
    assert os.readlink(root / "current") == "var/www/shop"


def test_assets_are_the_same_bytes_every_time(tmp_path: Path):
    """Two generations give identical trees (names, links, contents): archives of an unchanged
    host compare equal run after run; and the tree has what an archiver must get right."""
    first, second = tmp_path / "a", tmp_path / "b"
    count = assets.generate(first)
    assert assets.generate(second) == count > 300
    assert roots._tree_hash(first) == roots._tree_hash(second)
    assert (first / "shared/docs/café menu.txt").is_file()
    assert os.readlink(first / "shared/downloads/latest.csv") == "catalog-30.csv"
    assert (first / "shared/docs/terms.txt").stat().st_nlink == 2
    assert (first / "shared/media/uploads-pending").is_dir()
    assert (first / "shared/media/intro video.bin").stat().st_size == 3 << 20


def test_mount_points_are_unescaped_as_the_kernel_writes_them():
    """/proc/self/mountinfo writes a blank as \\040 and a backslash as \\134."""
    assert _unescape(r"/srv/my\040root/proc") == "/srv/my root/proc"
    assert _unescape(r"/a\134b/café") == "/a\\b/café"
