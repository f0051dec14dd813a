"""What validates, renders: a plan `ferry validate` accepts never fails its VMs when their
scripts are rendered (which happens after archiving, so a refusal there costs a migration).

Hypothesis varies every text of the test plan that reaches a script (names, hostnames, mount
points, archive paths and excludes, database names, the database data dir) and the sizes the
renderer turns into MiB, with arbitrary text: quotes, newlines, `$()`, backticks, unicode,
leading '-'. A plan the validator refuses is fine; one it accepts must render for every VM, with
the disks a provider attaches and every archive, into scripts that `bash -n` accepts.

Bounded and repeatable like the plan fuzzer (derandomized; FERRY_FUZZ_EXAMPLES scales it)."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.configurator.render import (BASE_IMAGE, KERNEL_BUNDLE, ArchiveRef,
                                          render_local_start, render_script)
from shared.plan import DATABASE_NAME, LABEL, VM, Plan, PlanError, load_plan
from shared.providers.base import VmSpec, planned_disks
from tests.unit.test_render import BASH

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "shop-local.yaml"
SCALE = int(os.environ.get("FERRY_FUZZ_EXAMPLES", "40")) / 40
PLANS = settings(max_examples=int(100 * SCALE), deadline=None, database=None,
                 derandomize=os.environ.get("FERRY_FUZZ_RANDOM") != "1",
                 suppress_health_check=list(HealthCheck))
SHA256 = hashlib.sha256(b"").hexdigest()


def base_plan() -> dict:
    data = yaml.safe_load(FIXTURE.read_text())
    # The cutover's DNS records name VMs, so a renamed VM would be refused for them alone.
    data["cutover"].pop("dns")
    return data


# Pieces that have broken scripts (or could): shell syntax, quoting, my.cnf and fstab syntax.
PIECES = ["'", '"', "\\", "\n", "\t", "\r", " ", "$(touch PWNED)", "`touch PWNED`", "$HOME",
          ";", "&", "|", "#", "-", "--x", "..", ".", "/", "//", "é", "\u2028", "\x7f", "\x1b",
          "{{x}}", "}}}", "%s", "*", "~", "=", ",", "\u00a0", "😀"]
texts = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=6).map(
    "".join)
# Most fields take only absolute paths or plain words: so that enough plans are accepted, the
# values are also drawn close to what each accepts, hostile pieces inside.
segments = texts.filter(lambda text: text not in ("", ".", "..") and "/" not in text)
paths = st.lists(segments, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
words = st.lists(st.one_of(st.sampled_from(["a", "db", "x1", "-", "_", "."]), texts),
                 min_size=1, max_size=4).map("".join)
names = st.one_of(st.from_regex(LABEL, fullmatch=True),
                  st.from_regex(DATABASE_NAME, fullmatch=True))
hostnames = st.lists(st.from_regex(LABEL, fullmatch=True), min_size=1, max_size=3).map(
    ".".join)
anything = st.one_of(texts, words)
sizes = st.one_of(st.floats(min_value=0, max_value=2, allow_nan=False),
                  st.sampled_from([1e-9, 0.0001, 0.0004, 0.0005, 0.001, 1e300, 1.7e308]))
# Whole GB, up to more than a float holds: the filesystems' sizes must fit in them.
disk_sizes = st.one_of(st.integers(min_value=1, max_value=100), st.integers(min_value=1),
                       st.just(10 ** 309))


def _set(path: tuple):
    def change(data: dict, value) -> None:
        node = data
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
    return change


def _excludes(vm: int, archive: int):
    def change(data: dict, value) -> None:
        data["vms"][vm]["archives"][archive]["excludes"].append(value)
    return change


# Every place of the test plan whose value reaches a script or the renderer's checks, and what
# to put there: arbitrary text, or text close to what the field accepts.
named = st.one_of(names, names, anything)
pathed = st.one_of(paths, paths, anything)
FIELDS = {
    "group": (_set(("group",)), named),
    "app name": (_set(("vms", 0, "name")), named),
    "replica name": (_set(("vms", 2, "name")), named),
    "hostname": (_set(("vms", 0, "network", "hostname")), st.one_of(hostnames, anything)),
    "data mount": (_set(("vms", 0, "filesystems", 3, "mount")), pathed),
    "db mount": (_set(("vms", 1, "filesystems", 3, "mount")), pathed),
    "root archive": (_set(("vms", 0, "archives", 0, "path")), pathed),
    "data archive": (_set(("vms", 0, "archives", 1, "path")), pathed),
    "exclude": (_excludes(0, 1), anything),
    "database name": (_set(("vms", 1, "databases", 0, "name")), named),
    "master data dir": (_set(("vms", 1, "database_data_dir")), pathed),
    "replica data dir": (_set(("vms", 2, "database_data_dir")), pathed),
    "app data dir": (_set(("vms", 0, "database_data_dir")), pathed),
    "boot size": (_set(("vms", 0, "filesystems", 0, "size_gb")), sizes),
    "swap size": (_set(("vms", 1, "filesystems", 2, "size_gb")), sizes),
    "data size": (_set(("vms", 0, "filesystems", 3, "size_gb")), sizes),
    "app disk": (_set(("vms", 0, "disks", 1, "size_gb")), disk_sizes),
    "master disk": (_set(("vms", 1, "disks", 1, "size_gb")), disk_sizes),
}
changes = st.lists(st.sampled_from(sorted(FIELDS)).flatmap(
    lambda field: st.tuples(st.just(field), FIELDS[field][1])), min_size=1, max_size=2)
BASE = base_plan()


def validated(data: dict) -> Plan | None:
    """The plan as `ferry validate` reads it (YAML text), or None when refused."""
    try:
        return load_plan(yaml.safe_dump(data, allow_unicode=True), base_dir=FIXTURE.parent)
    except PlanError:
        return None


def archives_of(vm: VM) -> list[ArchiveRef]:
    """Every archive the archiver makes of the VM: one per path, one dump per database."""
    refs = [ArchiveRef(id=f"a{i}", kind="path", source=spec.path, sha256=SHA256, size=0)
            for i, spec in enumerate(vm.archives)]
    refs += [ArchiveRef(id=f"d{i}", kind="database", source=db.name, sha256=SHA256, size=0,
                        engine=db.engine) for i, db in enumerate(vm.databases)]
    return refs


def disks_of(plan: Plan, vm: VM) -> list:
    """The disks a provider attaches for the VM, as the creator asks for them."""
    spec = VmSpec(vm_id=uuid.uuid4(), group=plan.group, name=vm.name, role=vm.role.value,
                  cpus=vm.cpus, memory_mb=vm.memory_mb, disks_gb=[d.size_gb for d in vm.disks],
                  disk_buses=[d.bus for d in vm.disks], address=str(vm.network.address))
    return planned_disks(spec)


def bash_parses(script: str, what: str) -> None:
    syntax = subprocess.run([BASH, "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, f"bash -n {what}:\n{syntax.stderr}"


def renders(plan: Plan) -> None:
    support = {BASE_IMAGE: SHA256, KERNEL_BUNDLE: SHA256}
    for vm in plan.vms:
        archives = archives_of(vm)
        bash_parses(render_script(plan, vm, archives, disks=disks_of(plan, vm), mac="52:54:00:12:34:56",
                                  support=support), f"{vm.name}'s configuration script")
        bash_parses(render_local_start(plan, vm, archives), f"{vm.name}'s local.start")


def test_the_test_plan_renders():
    plan = validated(BASE)
    assert plan is not None
    renders(plan)


def test_every_plan_that_validates_renders_into_scripts_bash_parses():
    accepted = []

    @settings(PLANS)
    @given(changes)
    def check(edits):
        data = copy.deepcopy(BASE)
        for field, value in edits:
            FIELDS[field][0](data, value)
        plan = validated(data)
        if plan is not None:
            accepted.append(edits)
            renders(plan)

    check()
    # The property says nothing if every varied plan is refused.
    assert len(accepted) >= int(15 * SCALE), f"only {len(accepted)} varied plans validated"
