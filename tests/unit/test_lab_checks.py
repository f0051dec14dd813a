"""The lab's checks read what the VMs answer correctly: sha256sum listings with awkward names,
the plan's excludes anchored at the archived path, ssh run inside the group's namespace."""

from __future__ import annotations

from pathlib import Path

from lab.checks import VmShell, _excluded, _listing


def test_a_sha256sum_listing_keeps_names_with_spaces():
    """Names with spaces survive the parse; the leading ./ of find's output is dropped."""
    text = "aa  ./shared/images/red mug.png\nbb  ./top.txt\n"
    assert _listing(text) == {"shared/images/red mug.png": "aa", "top.txt": "bb"}


def test_excludes_are_anchored_at_the_archived_path():
    """'shared/tmp/*' drops everything below shared/tmp, at any depth, but not a tmp
    elsewhere; a bare directory pattern drops its contents too."""
    patterns = ["shared/tmp/*", "sessions"]
    assert _excluded("shared/tmp/a", patterns)
    assert _excluded("shared/tmp/deep/b", patterns)
    assert _excluded("sessions/s1", patterns)
    assert not _excluded("tmp/x", patterns)
    assert not _excluded("shared/images/tmp.png", patterns)


def test_commands_reach_the_vm_at_its_planned_address():
    """ssh to the VM's address, with the given key, never prompting."""
    argv = VmShell("10.20.0.11", Path("/k/id")).argv("lvs")
    assert argv[0] == "ssh"
    assert argv[argv.index("-i") + 1] == "/k/id"
    assert "BatchMode=yes" in argv and argv[-2:] == ["root@10.20.0.11", "lvs"]
