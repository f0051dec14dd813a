"""The ferry command's local parts (no gateway needed)."""

from pathlib import Path

from click.testing import CliRunner

from cli.main import main
from shared.plan import load_plan_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shop.yaml"


def test_validate_accepts_the_example_plan():
    """`ferry validate` says the example plan is valid."""
    result = CliRunner().invoke(main, ["validate", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "group 'shop' with 3 VMs is valid" in result.output


def test_validate_points_at_the_field_and_line_of_an_error(tmp_path):
    """`ferry validate` on a bad plan exits 1 naming the file, line, column and field."""
    bad = tmp_path / "bad.yaml"
    text = EXAMPLE.read_text().replace("      - size_gb: 20\n", "      - size_gb: -5\n", 1)
    bad.write_text(text)
    line = text.splitlines().index("      - size_gb: -5") + 1
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 1
    assert f"bad.yaml:{line}:" in result.output
    assert "vms[0].disks[1].size_gb: must be greater than 0" in result.output


def test_status_without_a_gateway_says_where_it_looked(tmp_path, monkeypatch):
    """With no gateway listening, `ferry status` fails with the address it tried, on stderr,
    with the exit status of an unavailable gateway."""
    monkeypatch.setenv("FERRY_GATEWAY_PORT", "9")
    monkeypatch.setenv("FERRY_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 5
    assert "cannot reach the gateway at https://127.0.0.1:9" in result.stderr


def test_validate_gives_line_and_column_of_a_deeply_nested_field(tmp_path):
    """A problem three levels down (a VM's database's port) is reported at the line and column
    where its key is written."""
    bad = tmp_path / "bad.yaml"
    text = EXAMPLE.read_text()
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("- engine: mariadb"))
    indent = lines[at].index("engine")
    lines.insert(at + 1, " " * indent + "port: 70000")
    bad.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 1, result.output
    # The first database entry of the example is the master's: vms[1] (app1, db1, db2).
    vm_index = [vm.name for vm in load_plan_file(EXAMPLE).vms].index("db1")
    assert vm_index == 1
    output = " ".join(result.output.split())  # the console wraps long lines
    assert (f"bad.yaml:{at + 2}:{indent + 1}: vms[{vm_index}].databases[0].port: "
            "must be at most 65535") in output


GROUP = {
    "id": "0", "name": "shop", "status": "active", "halted_reason": None,
    "created_at": "2026-11-25T10:00:00+00:00", "vm_count": 3,
    "states": {"ready": 1, "configuring": 1, "failed": 1}, "messages": [],
    "vms": [
        {"id": "1", "name": "app1", "role": "app", "state": "ready", "held_state": None,
         "failed_from": None, "step": "first-boot", "message": None,
         "state_changed_at": "", "seconds_in_state": 5},
        {"id": "2", "name": "db1", "role": "db-master", "state": "configuring",
         "held_state": None, "failed_from": None, "step": "unpack-archives",
         "message": "unpacking /var/lib/mysql", "state_changed_at": "",
         "seconds_in_state": 3725},
        {"id": "3", "name": "db2", "role": "db-replica", "state": "failed", "held_state": None,
         "failed_from": "archiving", "step": "dump", "message": "mysqldump: access denied",
         "state_changed_at": "", "seconds_in_state": 61},
    ],
}


def test_progress_is_the_position_on_the_journey():
    """Planned is 0, live is 1; a failed VM stands where it failed, a halted one where it is
    held."""
    from cli.status import JOURNEY, group_progress, progress

    assert progress("planned") == 0 and progress("live") == 1
    assert 0 < progress("configuring") < progress("configured") < progress("ready") < 1
    assert progress("failed", failed_from="archiving") == progress("archiving")
    assert progress("halted", held_state="created") == progress("created")
    assert group_progress({"planned": 1, "live": 1}) == 0.5
    assert JOURNEY.index("loading") < JOURNEY.index("replicating") < JOURNEY.index("ready")


def test_watch_view_shows_a_bar_step_and_time_in_phase_per_vm():
    """The live view of one group: its overall progress, and per VM a bar with its percentage,
    the current step and how long it has been in its phase."""
    from rich.console import Console

    from cli.status import group_watch, groups_watch

    console = Console(record=True, width=160, color_system=None)
    console.print(group_watch(GROUP))
    text = console.export_text()
    assert "shop" in text and "active" in text
    assert "unpack-archives" in text and "1:02:05" in text  # 3725 s in configuring
    assert "failed (in archiving)" in text and "1:01" in text
    assert "100%" not in text and " 85%" in text  # ready: 11 of 13 steps
    assert "━" in text  # the bars

    console = Console(record=True, width=160, color_system=None)
    console.print(groups_watch([GROUP]))
    text = console.export_text()
    assert "shop" in text and " 41%" in text  # (11 + 5 + 1) / 3 of 13 steps


def test_status_watch_renders_live_until_the_group_is_ready(monkeypatch):
    """`ferry status GROUP --watch --until-ready` refreshes until the group is ready; plain
    `ferry status GROUP` still prints the table."""
    import cli.main as cli_main
    import cli.session

    answers = iter([GROUP, GROUP, {**GROUP, "status": "ready"}])
    monkeypatch.setattr(cli.session, "call", lambda method, path, *a, **k: next(answers))
    monkeypatch.setattr(cli_main.time, "sleep", lambda seconds: None)
    result = CliRunner().invoke(main, ["status", "shop", "--watch", "--until-ready"])
    assert result.exit_code == 0, result.output
    assert "db2" in result.output and "%" in result.output and "ready" in result.output

    monkeypatch.setattr(cli.session, "call", lambda method, path, *a, **k: GROUP)
    result = CliRunner().invoke(main, ["status", "shop"])
    assert result.exit_code == 0, result.output
    assert "role" in result.output and "db1" in result.output
    assert "%" not in result.output  # no progress bars in the plain table


def test_a_group_of_simulated_vms_says_so_in_every_view():
    """`ferry status` in each of its forms marks a group whose VMs are simulated, and only
    such a group."""
    from rich.console import Console

    from cli.status import SIMULATED, group_table, group_watch, groups_table, groups_watch

    simulated = {**GROUP, "simulated": True}
    for render in (group_table, group_watch):
        for group, marked in ((simulated, True), (GROUP, False)):
            console = Console(record=True, width=160, color_system=None)
            console.print(render(group))
            assert (SIMULATED in console.export_text()) is marked, render.__name__
    for render in (groups_table, groups_watch):
        for group, marked in ((simulated, True), (GROUP, False)):
            console = Console(record=True, width=160, color_system=None)
            console.print(render([group]))
            assert (SIMULATED in console.export_text()) is marked, render.__name__


def test_a_vm_waiting_for_a_slot_says_so_whole_in_every_group_view():
    """A VM that waits for a slot shows why, uncut (its message column would cut it), in the
    table and the watch; without `waiting` the message shows as before."""
    from rich.console import Console

    from cli.status import group_table, group_watch

    why = "waiting for a slot: 20 of 20 in flight on host qemu+ssh://root@hv2.example/system"
    vms = [{**vm, "waiting": why if vm["name"] == "db2" else None} for vm in GROUP["vms"]]
    for render in (group_table, group_watch):
        console = Console(record=True, width=250, color_system=None)
        console.print(render({**GROUP, "vms": vms}))
        text = console.export_text()
        assert why in text, render.__name__
        assert text.count("waiting for a slot") == 1, render.__name__


def test_a_gateway_that_never_answers_is_an_error_not_a_traceback():
    """The gateway accepts the connection, then says nothing (a long replay, a stuck proxy):
    the client's time-out is a GatewayError naming the request, which `ferry` prints as its
    other errors."""
    import socket

    import pytest

    from cli.client import Gateway, GatewayError

    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        gateway = Gateway(f"http://127.0.0.1:{port}", "token", timeout_s=0.3)
        with pytest.raises(GatewayError, match=r"POST /v1/dead-letters/archiver/replay: the "
                                               r"gateway at .* did not answer within 0.3 s"):
            gateway.call("POST", "/v1/dead-letters/archiver/replay")


def test_validate_refuses_what_would_fail_at_render(tmp_path):
    """A database_data_dir the database server's my.cnf cannot hold is a plan error at its
    line, not a VM failed at render after archiving (issue 22)."""
    bad = tmp_path / "bad.yaml"
    text = EXAMPLE.read_text().replace("database_data_dir: /db\n",
                                       "database_data_dir: '/db\"s'\n", 1)
    assert text != EXAMPLE.read_text()
    bad.write_text(text)
    line = text.splitlines().index("    database_data_dir: '/db\"s'") + 1
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())  # the console wraps long lines
    assert (f"bad.yaml:{line}:5: vms[1].database_data_dir: cannot be written into my.cnf: "
            "it must not hold '\"', '\\' or control characters") in output


def test_cancel_without_a_terminal_or_yes_refuses_and_says_so(tmp_path, monkeypatch):
    """`ferry cancel` asks for the group's name to be typed; with no terminal to ask on and
    no --yes it refuses before reaching the gateway (usage: nothing sent), saying how to go
    on."""
    monkeypatch.setenv("FERRY_GATEWAY_PORT", "9")
    monkeypatch.setenv("FERRY_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["cancel", "shop"])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "there is no terminal to ask on: pass --yes to cancel without asking" in output
    assert "cannot reach the gateway" not in output


def test_finalize_wants_the_operator_to_say_what_becomes_of_the_forwarding():
    result = CliRunner().invoke(main, ["finalize", "shop"])
    assert result.exit_code == 2 and "Missing option '--forwarding'" in result.output
