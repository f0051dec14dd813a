"""`ferry` as operators script it: -o json on stdout, errors on stderr, an exit status per
outcome, the cutover's confirmation, and a followed run whose gateway goes away. Against a
stand-in gateway over real HTTP (tests/unit/fake_gateway.py)."""

from __future__ import annotations

import json
import threading
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli.confirm
import cli.cutover
from cli.exits import Exit
from cli.main import main
from tests.unit.fake_gateway import DROP, FakeGateway
from tests.unit.test_cli import GROUP

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shop.yaml"
TOKEN = "scripted-token"
RUN_ID = "6f1c9a3e-0000-4000-8000-000000000001"


def run_view(status: str, steps: int = 1) -> dict:
    return {"id": RUN_ID, "prepare": False, "status": status, "reason": None,
            "downtime_s": 3.1 if status == "completed" else None,
            "created_at": "2026-12-01T10:00:00+00:00", "finished_at": None,
            "steps": [{"position": i, "name": f"step-{i}", "status": "done", "started_at": None,
                       "finished_at": None, "seconds": 0.5, "error": None}
                      for i in range(steps)]}


def in_turn(*answers):
    """A route answering each of `answers` in turn, then the last one again and again."""
    left = list(answers)

    def route(seen):
        return left.pop(0) if len(left) > 1 else left[0]
    return route


@pytest.fixture
def gateway(tmp_path, monkeypatch):
    fake = FakeGateway().start()
    for name in list(__import__("os").environ):
        if name.startswith("FERRY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FERRY_GATEWAY_PORT", str(fake.port))
    monkeypatch.setenv("FERRY_GATEWAY_PLAIN_HTTP", "true")  # the stand-in speaks plain HTTP
    monkeypatch.setenv("FERRY_OPERATOR_TOKEN", TOKEN)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no operator's file
    monkeypatch.setenv("HOME", str(tmp_path))
    fake.answer("GET", "/v1/groups", (200, {"groups": [GROUP]}))
    fake.answer("GET", "/v1/groups/shop", (200, {**GROUP, "status": "ready"}))
    # Nothing waits for real time: the follow and watch loops poll at once.
    monkeypatch.setattr(cli.cutover, "POLL_S", 0.01)
    yield fake
    fake.stop()


def ferry(*args: str, stdin: str | None = None):
    return CliRunner().invoke(main, list(args), input=stdin)


def data(result) -> object:
    return json.loads(result.stdout)


# -- output ------------------------------------------------------------------------------------

def test_json_goes_to_stdout_alone_before_or_after_the_command(gateway):
    """`-o json` (or `--output json`) before the command or after it: stdout is one JSON
    document, the gateway's answer, and stderr is empty."""
    for args in (["-o", "json", "status"], ["status", "-o", "json"],
                 ["status", "--output", "json"]):
        result = ferry(*args)
        assert result.exit_code == 0, result.output
        assert data(result) == {"groups": [GROUP]}
        assert result.stderr == ""
    result = ferry("status", "shop", "-o", "json")
    assert data(result)["vms"][1]["step"] == "unpack-archives"
    assert gateway.requests("GET", "/v1/groups")[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_text_stays_the_default(gateway):
    result = ferry("status")
    assert result.exit_code == 0
    assert "Groups" in result.stdout and not result.stdout.lstrip().startswith("{")


def test_every_data_command_speaks_json(gateway):
    """Each command that prints data gives JSON of a known shape."""
    vm = GROUP["vms"][0]
    gateway.answer("POST", "/v1/groups", (201, {"id": "7", "name": "shop"}))
    gateway.answer("GET", f"/v1/vms/{vm['id']}/messages?after=0", (200, {"messages": [
        {"id": 1, "vm_id": vm["id"], "level": "info", "text": "partitioned", "at": "2026"},
        {"id": 2, "vm_id": vm["id"], "level": "error", "text": "no disk", "at": "2026"}]}))
    gateway.answer("POST", "/v1/groups/shop/resume", (200, {"ok": True}))
    gateway.answer("POST", f"/v1/vms/{vm['id']}/retry", (200, {**vm, "state": "archiving"}))
    verification = {"group": "shop", "status": "ready", "sites": [], "checks": [],
                    "passed": True}
    gateway.answer("GET", "/v1/groups/shop/verify", (200, verification))
    letters = {"service": "creator", "messages": []}
    gateway.answer("GET", "/v1/dead-letters/creator", (200, letters))
    gateway.answer("POST", "/v1/dead-letters/creator/replay", (200, {"replayed": 2}))

    def json_of(*args: str):
        result = ferry(*args, "-o", "json")
        assert result.exit_code == 0, result.output
        assert result.stderr == "", result.stderr
        return result.stdout

    assert json.loads(json_of("submit", str(EXAMPLE))) == {"id": "7", "name": "shop"}
    lines = json_of("logs", "shop/app1").splitlines()  # JSON Lines: one message a line
    assert [json.loads(line)["text"] for line in lines] == ["partitioned", "no disk"]
    assert json.loads(json_of("resume", "shop")) == {"group": "shop", "resumed": True}
    assert json.loads(json_of("retry", "shop/app1"))["state"] == "archiving"
    assert json.loads(json_of("verify", "shop")) == verification
    assert json.loads(json_of("dlq", "creator")) == letters
    assert json.loads(json_of("dlq", "creator", "--replay")) == {"replayed": 2}
    valid = json.loads(json_of("validate", str(EXAMPLE)))
    assert valid["valid"] is True and valid["group"] == "shop" and valid["problems"] == []
    assert [vm["name"] for vm in valid["vms"]] == ["app1", "db1", "db2"]


def test_an_invalid_plan_is_json_data_and_an_error(tmp_path):
    """`validate -o json` on a bad plan: the problems as JSON on stdout, the error on stderr,
    exit 1."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("      - size_gb: 20\n", "      - size_gb: -5\n", 1))
    result = ferry("validate", str(bad), "-o", "json")
    assert result.exit_code == Exit.FAILED
    answer = data(result)
    assert answer["valid"] is False
    assert answer["problems"][0]["location"] == "vms[0].disks[1].size_gb"
    assert answer["problems"][0]["line"] > 0
    assert "is not valid" in result.stderr


def test_watch_in_json_prints_a_line_per_refresh(gateway):
    gateway.answer("GET", "/v1/groups/shop", in_turn(
        (200, GROUP), (200, {**GROUP, "status": "ready"})))
    result = ferry("status", "shop", "--until-ready", "--interval", "0", "-o", "json")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["status"] for line in result.stdout.splitlines()] == \
        ["active", "ready"]


# -- exit statuses ----------------------------------------------------------------------------

def test_a_refusal_is_1_with_the_error_on_stderr(gateway):
    result = ferry("status", "nosuch", "-o", "json")
    assert result.exit_code == Exit.FAILED
    assert result.stdout == ""
    assert "error: no /v1/groups/nosuch" in result.stderr


def test_a_bad_command_line_is_2():
    for args in (["status", "--bogus"], ["status", "-o", "yaml"], ["cutover"],
                 ["status", "--until-ready"]):
        result = ferry(*args)
        assert result.exit_code == Exit.USAGE, (args, result.output)


def test_a_halted_group_is_3(gateway):
    """Plain `status GROUP` shows a halted group and exits 3; `--until-ready` stops on it with
    3; a cutover requested of it is refused with 3."""
    halted = {**GROUP, "status": "halted", "halted_reason": "db2 failed in archiving"}
    gateway.answer("GET", "/v1/groups/shop", (200, halted))
    result = ferry("status", "shop")
    assert result.exit_code == Exit.HALTED
    assert "HALTED: db2 failed" in result.stdout
    result = ferry("status", "shop", "--until-ready", "--interval", "0")
    assert result.exit_code == Exit.HALTED
    assert "group shop halted: db2 failed in archiving" in result.stderr
    gateway.answer("POST", "/v1/groups/shop/cutover",
                   (409, {"error": "group shop is halted, not ready", "problems": []}))
    result = ferry("cutover", "shop", "--yes")
    assert result.exit_code == Exit.HALTED
    assert "group shop is halted: db2 failed in archiving" in result.stderr


def test_a_wait_for_a_cancelled_group_ends_at_once(gateway):
    """`--until-ready` stops on a group that is being cancelled (exit 1: it will never be
    ready), and ends at once on one already finalized (it was ready, and more)."""
    gateway.answer("GET", "/v1/groups/shop", (200, {**GROUP, "status": "cancelling"}))
    result = ferry("status", "shop", "--until-ready", "--interval", "0", "--timeout", "5")
    assert result.exit_code == Exit.FAILED
    assert "group shop is cancelling: it will not be ready" in result.stderr
    gateway.answer("GET", "/v1/groups/shop", (200, {**GROUP, "status": "finalized"}))
    result = ferry("status", "shop", "--until-ready", "--interval", "0", "--timeout", "5")
    assert result.exit_code == Exit.OK


def test_a_wait_that_runs_out_is_4(gateway):
    gateway.answer("GET", "/v1/groups/shop", (200, GROUP))  # active, for ever
    result = ferry("status", "shop", "--until-ready", "--timeout", "0.05", "--interval", "0.01")
    assert result.exit_code == Exit.TIMED_OUT
    assert "not ready after 0.05 s (it is active)" in result.stderr
    gateway.answer("POST", "/v1/groups/shop/cutover", (202, {"run_id": RUN_ID}))
    gateway.answer("GET", "/v1/groups/shop/cutover", (200, {"group": "shop",
                                                            "runs": [run_view("running")]}))
    result = ferry("cutover", "shop", "--yes", "--timeout", "0.05")
    assert result.exit_code == Exit.TIMED_OUT
    assert f"cutover run {RUN_ID} of shop has not ended after 0.05 s" in result.stderr
    assert "ferry cutover shop --follow" in result.stderr


def test_an_absent_gateway_or_a_503_is_5(gateway):
    gateway.answer("GET", "/v1/groups", (503, {"error": "a backing service (state store or "
                                                        "broker) is unavailable; retry"}))
    result = ferry("status")
    assert result.exit_code == Exit.UNAVAILABLE
    assert "unavailable; retry" in result.stderr
    gateway.stop()
    result = ferry("status", "-o", "json")
    assert result.exit_code == Exit.UNAVAILABLE
    assert result.stdout == ""
    assert f"cannot reach the gateway at http://127.0.0.1:{gateway.port}" in result.stderr


def test_a_refused_token_says_where_the_token_came_from(gateway):
    gateway.answer("GET", "/v1/groups", (403, {"error": "the operator token is not valid"}))
    result = ferry("status")
    assert result.exit_code == Exit.FAILED
    assert "(the token from FERRY_OPERATOR_TOKEN, for http://127.0.0.1:" in result.stderr


def test_the_exit_statuses_are_in_the_help_and_the_version_is_the_package_s():
    result = ferry("--help")
    assert result.exit_code == 0
    for code in Exit:
        assert f"  {int(code):<4} " in result.stdout
    assert "-o json" in result.stdout
    result = ferry("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"ferry {metadata.version('ferryman')}"


# -- the cutover: asking first ----------------------------------------------------------------

@pytest.fixture
def cutover_gateway(gateway):
    gateway.answer("POST", "/v1/groups/shop/cutover", (202, {"run_id": RUN_ID}))
    gateway.answer("GET", "/v1/groups/shop/cutover", (200, {"group": "shop", "runs": [
        run_view("completed", steps=2)]}))
    return gateway


def test_without_a_terminal_the_cutover_wants_yes(cutover_gateway):
    """stdin is not a terminal (a script, a pipe): without --yes nothing is requested."""
    result = ferry("cutover", "shop", stdin="shop\n")
    assert result.exit_code == Exit.USAGE
    assert "stdin is not a terminal" in result.stderr and "--yes" in result.stderr
    assert cutover_gateway.requests("POST", "/v1/groups/shop/cutover") == []
    result = ferry("cutover", "shop", "--yes")
    assert result.exit_code == 0, result.output
    assert "cutover completed: downtime 3.1s" in result.stdout
    assert cutover_gateway.requests("POST", "/v1/groups/shop/cutover")[0].body == \
        {"prepare": False}


def test_at_a_terminal_the_cutover_wants_the_group_s_name(cutover_gateway, monkeypatch):
    monkeypatch.setattr(cli.confirm, "stdin_is_terminal", lambda: True)
    result = ferry("cutover", "shop", stdin="y\n")  # not the name
    assert result.exit_code == Exit.FAILED
    assert "not confirmed: nothing was requested" in result.stderr
    assert "Type the group's name (shop)" in result.stderr  # the prompt: on stderr
    assert cutover_gateway.requests("POST", "/v1/groups/shop/cutover") == []
    result = ferry("cutover", "shop", stdin="")  # end of input
    assert result.exit_code == Exit.FAILED
    assert cutover_gateway.requests("POST", "/v1/groups/shop/cutover") == []

    result = ferry("cutover", "shop", "-o", "json", stdin="shop\n")
    assert result.exit_code == 0, result.output
    assert data(result)["status"] == "completed"  # the prompt kept off stdout
    assert f"at http://127.0.0.1:{cutover_gateway.port}" in result.stderr
    assert len(cutover_gateway.requests("POST", "/v1/groups/shop/cutover")) == 1


def test_preparing_asks_yes_or_no(cutover_gateway, monkeypatch):
    monkeypatch.setattr(cli.confirm, "stdin_is_terminal", lambda: True)
    result = ferry("cutover", "shop", "--prepare", stdin="\n")  # the default: no
    assert result.exit_code == Exit.FAILED
    assert cutover_gateway.requests("POST", "/v1/groups/shop/cutover") == []
    result = ferry("cutover", "shop", "--prepare", stdin="y\n")
    assert result.exit_code == 0, result.output
    assert cutover_gateway.requests("POST", "/v1/groups/shop/cutover")[0].body == \
        {"prepare": True}


def test_a_rolled_back_cutover_is_1_and_its_run_is_the_json(cutover_gateway):
    rolled_back = {**run_view("rolled_back"), "reason": "start-app failed"}
    cutover_gateway.answer("GET", "/v1/groups/shop/cutover",
                           (200, {"group": "shop", "runs": [rolled_back]}))
    result = ferry("cutover", "shop", "--yes", "-o", "json")
    assert result.exit_code == Exit.FAILED
    assert data(result) == rolled_back
    assert "cutover rolled back: start-app failed" in result.stderr  # progress: stderr
    result = ferry("cutover", "shop", "--yes", "--no-wait", "-o", "json")
    assert result.exit_code == 0
    assert data(result) == {"group": "shop", "run_id": RUN_ID}


# -- the cutover: losing the gateway -----------------------------------------------------------

def test_a_lost_run_is_an_error_and_5_not_a_traceback(cutover_gateway, monkeypatch):
    """The gateway answers the request and a first look at the run, then resets every
    connection: after the grace, `ferry cutover` ends with 5, saying the run goes on and how
    to follow it again."""
    monkeypatch.setattr(cli.cutover, "LOST_GRACE_S", 0.1)
    cutover_gateway.answer("GET", "/v1/groups/shop/cutover", in_turn(
        (200, {"group": "shop", "runs": [run_view("running")]}), DROP))
    result = ferry("cutover", "shop", "--yes")
    assert result.exit_code == Exit.UNAVAILABLE, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert f"lost cutover run {RUN_ID} of shop" in result.stderr
    assert "dropped the connection" in result.stderr
    assert "`ferry cutover shop --follow` picks it up again" in result.stderr
    assert "step-0" in result.stdout  # what was seen before


def test_a_gateway_gone_mid_run_is_5(cutover_gateway, monkeypatch):
    monkeypatch.setattr(cli.cutover, "LOST_GRACE_S", 0.1)

    def then_gone(seen):
        threading.Thread(target=cutover_gateway.stop).start()
        return 200, {"group": "shop", "runs": [run_view("running")]}
    cutover_gateway.answer("GET", "/v1/groups/shop/cutover", then_gone)
    result = ferry("cutover", "shop", "--yes", "-o", "json")
    assert result.exit_code == Exit.UNAVAILABLE, result.output
    assert result.stdout == ""
    assert "cannot reach the gateway" in result.stderr and "--follow" in result.stderr


def test_a_request_whose_answer_is_lost_may_have_been_made(cutover_gateway):
    cutover_gateway.answer("POST", "/v1/groups/shop/cutover", DROP)
    result = ferry("cutover", "shop", "--yes")
    assert result.exit_code == Exit.UNAVAILABLE
    assert "may or may not have been requested" in result.stderr


def test_follow_picks_up_the_newest_run_without_requesting_one(cutover_gateway):
    result = ferry("cutover", "shop", "--follow", "-o", "json")
    assert result.exit_code == 0, result.output
    assert data(result)["id"] == RUN_ID
    assert cutover_gateway.requests("POST", "/v1/groups/shop/cutover") == []
    assert ferry("cutover", "shop", "--follow", "--prepare").exit_code == Exit.USAGE
