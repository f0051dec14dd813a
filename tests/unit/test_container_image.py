"""deploy/container/Containerfile and docker-compose.yml run the services unprivileged: the image's
last USER is the ferry user (uid 10001, not root), its state folder that user's, and compose
drops every capability. (No container engine runs here: these read the files; nothing builds
the image.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from services.topology import SERVICES

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "deploy" / "container" / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_the_image_runs_as_ferry_uid_10001_after_everything_root_does():
    steps = instructions()
    users = [i for i, (word, _) in enumerate(steps) if word == "USER"]
    assert users, "the Containerfile sets no USER: the services would run as root"
    last = users[-1]
    assert steps[last][1] in ("10001:10001", "ferry", "10001", "ferry:ferry"), steps[last]
    # Nothing after it starts needing root again (a RUN as ferry could not install anything).
    assert [word for word, _ in steps[last + 1:]] == ["CMD"], steps[last + 1:]
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert re.search(r"groupadd [^&]*--gid 10001 ferry", runs), runs
    assert re.search(r"useradd [^&]*--uid 10001 --gid ferry", runs), runs
    # The state folder exists, is ferry's, and is where the services are told it is.
    assert "install -d -m 0700 -o ferry -g ferry /var/lib/ferryman" in runs
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "FERRY_STATE_DIR=/var/lib/ferryman" in env
    assert ("VOLUME", "/var/lib/ferryman") in steps


def test_compose_runs_every_service_without_capabilities_on_a_read_only_root():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name in (*SERVICES, "gateway"):
        service = compose["services"][name]
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
        assert "ferry-state:/var/lib/ferryman" in service["volumes"], name
        assert service["environment"]["FERRY_STATE_DIR"] == "/var/lib/ferryman", name
