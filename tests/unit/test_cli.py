"""Command-line help and the settings listing (no services needed)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from livestream.cli import app
from stream.settings import Settings

runner = CliRunner()


def test_settings_lists_every_setting_with_its_environment_value_and_hides_secrets() -> None:
    env = {"LIVESTREAM_IDLE_TICK_S": "2.5", "LIVESTREAM_GATEWAY_TOKENS": "s=abc"}
    result = runner.invoke(app, ["settings", "--json"], env=env)
    assert result.exit_code == 0, result.output
    rows = {row["env"]: row for row in map(json.loads, result.output.splitlines())}
    assert set(rows) == {f"LIVESTREAM_{name.upper()}" for name in Settings.model_fields}
    assert rows["LIVESTREAM_IDLE_TICK_S"]["value"] == "2.5" and rows["LIVESTREAM_IDLE_TICK_S"]["default"] == "5.0"
    assert rows["LIVESTREAM_GATEWAY_TOKENS"]["value"] == "set", "a token is never printed"
    assert all(row["description"] for row in rows.values()), "every setting says what it does"


def test_help_says_how_to_run_the_gateway_and_where_the_worker_settings_are() -> None:
    gateway = runner.invoke(app, ["gateway", "--help"], env={"COLUMNS": "200"})
    assert "`livestream gateway` (no command) runs it" in gateway.output
    hash_token = runner.invoke(app, ["gateway", "hash-token", "--help"], env={"COLUMNS": "200"})
    assert "[sources.NAME]" in hash_token.output
    worker = runner.invoke(app, ["worker", "--help"], env={"COLUMNS": "200"})
    assert "livestream settings" in worker.output
