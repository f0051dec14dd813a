"""Host keys pinned (shared/host_keys.py): the public key lines a new VM reports are read as
OpenSSH reads them, their fingerprints are the ones ssh-keygen prints, garbage is refused with
its reason, and the known_hosts the cutover writes is one OpenSSH finds its keys in.
Keys are made by the real ssh-keygen in each test's folder."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from shared.host_keys import (
    BadHostKey, HostKey, fingerprints, known_hosts_name, parse_key, parse_keys,
    write_known_hosts,
)


def made_key(folder: Path, kind: str, comment: str = "root@legacy") -> str:
    """A fresh public key line of `kind`, as ssh_host_<kind>_key.pub holds it."""
    path = folder / f"ssh_host_{kind}_key"
    extra = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", comment, "-f",
                    str(path)], check=True)
    return (folder / f"{path.name}.pub").read_text().strip()


def keygen_fingerprint(line: str, folder: Path) -> str:
    path = folder / "one.pub"
    path.write_text(line + "\n")
    done = subprocess.run(["ssh-keygen", "-lf", str(path)], check=True, capture_output=True,
                          text=True)
    return done.stdout.split()[1]


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_a_public_key_line_reads_as_its_type_with_ssh_keygens_fingerprint(kind, tmp_path):
    line = made_key(tmp_path, kind)
    key = parse_key(line)
    assert key.line == " ".join(line.split()[:2])  # the comment is not kept
    assert key.fingerprint == keygen_fingerprint(line, tmp_path)
    assert str(key) == f"{line.split()[0]} {key.fingerprint}"


def test_keys_of_a_machine_are_one_per_type(tmp_path):
    """What `ssh-keygen -A` makes reads whole; two keys of one type cannot both be pinned."""
    ed, rsa = made_key(tmp_path, "ed25519"), made_key(tmp_path, "rsa")
    assert [k.type for k in parse_keys([ed, rsa])] == ["ssh-ed25519", "ssh-rsa"]
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(BadHostKey, match="more than one ssh-ed25519 key"):
        parse_keys([ed, made_key(other, "ed25519")])


BLOB = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + b"k" * 32).decode()


@pytest.mark.parametrize("line, reason", [
    ("", "not a public key line"),
    ("ssh-ed25519", "not a public key line"),
    (f"ssh-foo {BLOB}", "unknown host key type 'ssh-foo'"),
    ("ssh-ed25519 not*base64", "not valid base64"),
    ("ssh-ed25519 AAAA", "is 3 bytes; a host key is 32 to 4096"),
    ("ssh-ed25519 " + base64.b64encode(b"x" * 5000).decode(), "is 5000 bytes"),
    (f"ssh-rsa {BLOB}", "the ssh-rsa key's data is not a ssh-rsa key"),
    (f"ssh-ed25519 {BLOB} " + "c" * 300, "the comment of the ssh-ed25519 key is not one short"),
])
def test_garbage_is_refused_saying_why(line, reason):
    with pytest.raises(BadHostKey, match=reason.replace("(", r"\(").replace("*", r"\*")):
        parse_key(line)


def test_a_bad_key_among_several_is_named_by_its_position(tmp_path):
    with pytest.raises(BadHostKey, match="^key 2: unknown host key type"):
        parse_keys([made_key(tmp_path, "ed25519"), f"x-type {BLOB}"])
    with pytest.raises(BadHostKey, match="no host key given"):
        parse_keys([])
    with pytest.raises(BadHostKey, match="9 host keys; at most 8"):
        parse_keys([f"ssh-ed25519 {BLOB}"] * 9)


def test_the_known_hosts_written_is_found_by_openssh_for_each_address_and_port(tmp_path):
    """ssh-keygen -F (OpenSSH's own lookup) finds each machine's keys under its address (and
    [address]:port off port 22), and nothing for a machine not pinned."""
    app = [parse_key(made_key(tmp_path, "ed25519"))]
    other = tmp_path / "db"
    other.mkdir()
    db = [parse_key(made_key(other, "ed25519")), parse_key(made_key(other, "rsa"))]
    path = tmp_path / "state" / "known_hosts"
    write_known_hosts(path, {("10.20.0.11", 22): app, ("10.20.0.12", 2222): db})

    def found(name: str) -> list[str]:
        done = subprocess.run(["ssh-keygen", "-F", name, "-f", str(path)], capture_output=True,
                              text=True)
        return [" ".join(line.split()[1:3]) for line in done.stdout.splitlines()
                if line and not line.startswith("#")]
    assert found("10.20.0.11") == [k.line for k in app]
    assert found("[10.20.0.12]:2222") == [k.line for k in db]
    assert found("10.20.0.12") == []
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    listed = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True,
                            check=True).stdout
    assert {line.split()[1] for line in listed.splitlines()} == {k.fingerprint
                                                                 for k in app + db}


def test_writing_again_replaces_the_file_whole(tmp_path):
    path = tmp_path / "known_hosts"
    write_known_hosts(path, {("10.0.0.1", 22): [parse_key(made_key(tmp_path, "ed25519"))]})
    write_known_hosts(path, {})
    assert path.read_text() == ""
    assert not (tmp_path / "known_hosts.partial").exists()


def test_an_address_known_hosts_cannot_name_is_refused(tmp_path):
    key = [HostKey("ssh-ed25519", BLOB)]
    with pytest.raises(BadHostKey, match="cannot be named in a known_hosts"):
        write_known_hosts(tmp_path / "kh", {("10.0.0.1 evil", 22): key})
    assert known_hosts_name("10.0.0.1", 22) == "10.0.0.1"
    assert known_hosts_name("10.0.0.1", 2200) == "[10.0.0.1]:2200"
    assert fingerprints([]) == "none"
