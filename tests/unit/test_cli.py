"""The ferry command's local parts (no gateway needed)."""

from pathlib import Path

from click.testing import CliRunner

from cli.main import main

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
    """With no gateway listening, `ferry status` fails with the address it tried."""
    monkeypatch.setenv("FERRY_GATEWAY_PORT", "9")
    monkeypatch.setenv("FERRY_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1
    assert "cannot reach the gateway at http://127.0.0.1:9" in result.output
