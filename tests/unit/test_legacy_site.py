"""The lab's legacy site, the parts that need neither root nor images: the site table, the
overlay copy that must never write outside a host's root, the generated assets."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import pytest
import yaml

from lab.legacy import LegacyError, assets, roots
from lab.legacy import site as site_module
from lab.legacy.config import BASE_IMAGE, IMAGES, REPO, SiteConfigError, load_site
from lab.legacy.mounts import _unescape
from shared.settings import Settings

BUILD_IMAGES = REPO / "deploy" / "lab" / "build-images.sh"


def test_the_site_table_gives_each_host_an_address_namespace_and_link():
    """examples/legacy/site.yaml: the shop's three hosts and the ledger's three on
    10.213.0.0/24, the uplink .254, interface names short enough for the kernel (15
    characters)."""
    site = load_site()
    assert site.network == ipaddress.IPv4Network("10.213.0.0/24")
    assert str(site.uplink) == "10.213.0.254"
    assert {n: str(h.address) for n, h in site.hosts.items()} == {
        "app1": "10.213.0.11", "db1": "10.213.0.12", "db2": "10.213.0.13",
        "old1": "10.213.0.21", "net1": "10.213.0.22", "plan1": "10.213.0.23"}
    assert [(s.engine, s.database, s.sql.name) for s in site.hosts["db1"].seeds] == [
        ("mariadb", "shop", "shop.sql"), ("postgresql", "stock", "stock.sql")]
    assert "postgresql" in site.hosts["db1"].daemons
    assert [(s.engine, s.database) for s in site.hosts["net1"].seeds] == [("mariadb", "ledger")]
    assert all(s.sql.is_file() for h in site.hosts.values() for s in h.seeds)
    assert all(len(h.site_link) <= 15 and len(h.namespace) <= 64 for h in site.hosts.values())
    assert all(site.hosts[n].public_address is None for n in ("old1", "net1", "plan1"))


def test_each_host_names_its_image_and_interface_the_shop_keeps_the_base_image():
    """`image:` defaults to the base image (the shop's hosts are as they were); the ledger's
    hosts each come from a legacy image, and name their NIC as their own configuration does."""
    site = load_site()
    assert {n: (h.image, h.interface) for n, h in site.hosts.items()} == {
        "app1": (BASE_IMAGE, "eth0"), "db1": (BASE_IMAGE, "eth0"), "db2": (BASE_IMAGE, "eth0"),
        "old1": ("legacy-bullseye.tar.zst", "eth0"),
        "net1": ("legacy-bookworm-networkd.tar.zst", "ens3"),
        "plan1": ("legacy-bookworm-netplan.tar.zst", "enp1s0")}
    for name in ("old1", "net1", "plan1"):
        assert roots.image_of(Path("/images"), site.hosts[name]) == Path(
            "/images", site.hosts[name].image)


def test_each_host_overlay_configures_the_interface_its_stack_names():
    """The legacy network configuration in each ledger host's overlay is its own stack's, on
    the interface site.yaml gives it, with its site address."""
    site = load_site()
    old1, net1, plan1 = (site.hosts[n] for n in ("old1", "net1", "plan1"))
    interfaces = (old1.overlay / "etc/network/interfaces").read_text()
    assert "auto eth0" in interfaces and "iface eth0 inet static" in interfaces
    assert f"address {old1.address}/24" in interfaces
    network = (net1.overlay / "etc/systemd/network/10-lan.network").read_text()
    assert f"Name={net1.interface}" in network and f"Address={net1.address}/24" in network
    netplan = yaml.safe_load((plan1.overlay / "etc/netplan/01-lan.yaml").read_text())
    ethernet = netplan["network"]["ethernets"][plan1.interface]
    assert netplan["network"]["renderer"] == "networkd"
    assert ethernet["addresses"] == [f"{plan1.address}/24"]


def test_the_images_the_site_knows_are_the_ones_the_build_makes():
    """Every image a host may name is packed by deploy/lab/build-images.sh."""
    script = BUILD_IMAGES.read_text()
    for image in IMAGES:
        assert re.search(rf'^pack_root "\$\w+" {re.escape(image)}$', script, re.M), image


def test_up_names_the_images_missing_from_an_older_build(tmp_path: Path, monkeypatch):
    """An images folder of a build before the legacy images: `up` says which image each host
    lacks, before anything is built or started."""
    (tmp_path / ".complete").touch()
    (tmp_path / BASE_IMAGE).touch()
    monkeypatch.setattr(site_module.os, "geteuid", lambda: 0)
    monkeypatch.setattr(site_module.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(LegacyError) as refused:
        site_module._preflight(Settings(lab_images=tmp_path), load_site())
    message = str(refused.value)
    assert "legacy-bullseye.tar.zst (for old1)" in message
    assert "legacy-bookworm-networkd.tar.zst (for net1)" in message
    assert "legacy-bookworm-netplan.tar.zst (for plan1)" in message
    assert "build-images.sh" in message
    for image in IMAGES:
        (tmp_path / image).touch()
    images = site_module._preflight(Settings(lab_images=tmp_path), load_site())
    assert images["app1"] == tmp_path / BASE_IMAGE
    assert images["old1"] == tmp_path / "legacy-bullseye.tar.zst"


def _site_file(tmp_path: Path, **host) -> Path:
    data = {"network": "10.213.0.0/24", "uplink": "10.213.0.254",
            "hosts": {"h1": {"address": "10.213.0.30", **host}}}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_host_without_image_gets_the_base_image(tmp_path: Path):
    host = load_site(_site_file(tmp_path)).hosts["h1"]
    assert (host.image, host.interface) == (BASE_IMAGE, "eth0")
    host = load_site(_site_file(tmp_path, image="legacy-bullseye.tar.zst")).hosts["h1"]
    assert host.image == "legacy-bullseye.tar.zst"


@pytest.mark.parametrize("image", ["legacy-buster.tar.zst", "legacy-bullseye",
                                   "../base-image.tar.zst", "", ["base-image.tar.zst"]])
def test_an_unknown_image_is_refused_naming_the_host_and_the_images_there_are(
        tmp_path: Path, image):
    with pytest.raises(SiteConfigError) as refused:
        load_site(_site_file(tmp_path, image=image))
    message = str(refused.value)
    assert "host h1: unknown image" in message
    assert all(name in message for name in IMAGES)


@pytest.mark.parametrize("interface", ["", "eth 0", "Ens3", "averyveryverylongname", 3])
def test_a_bad_interface_name_is_refused(tmp_path: Path, interface):
    with pytest.raises(SiteConfigError, match="host h1: interface"):
        load_site(_site_file(tmp_path, interface=interface))


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


@pytest.mark.parametrize("seed, message", [
    ({"engine": "mysql", "database": "shop", "sql": "shop.sql"}, "seed engine 'mysql'"),
    ({"engine": "postgresql", "database": "stock", "sql": "stock.sql"},
     "a postgresql seed, but postgresql is not among its daemons"),
    ({"engine": "mariadb", "database": "shop; DROP", "sql": "shop.sql"},
     "seed database 'shop; DROP'"),
])
def test_a_seed_names_a_server_the_host_runs_and_a_plain_database(tmp_path: Path, seed,
                                                                   message):
    with pytest.raises(SiteConfigError, match=re.escape(f"host h1: {message}")):
        load_site(_site_file(tmp_path, daemons=["sshd", "mariadb"], seeds=[seed]))
