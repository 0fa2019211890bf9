"""The README's commands as a newcomer pastes them: every `./dev` line of its code blocks is
a command the CLI accepts, and the questions it shows ("Ask") run, as written, against a
running warehouse and query API over a store the simulator filled; the trace-back line
the demo prints does too, with the incident's id pasted in."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import parser
from tests import app_world
from tests.harness import REPO, Env
from warehouse.store import Store

README = REPO / "README.md"
DEV_VERBS = {"demo": ["up", "--demo"]}  # ./dev's own verbs, as the nimtrail command they run
NOT_RUN_HERE = {
    "demo": "starts the whole pipeline (the demo tests do)",
    "test": "is pytest",
    "deployments": "needs the reader's own Helm values and governance file",
}
PASTED_ID = "chatcmpl-tool-…"  # where the README has the reader paste the demo's id


def code_lines() -> list[str]:
    """Every line of the README's fenced code blocks, stripped."""
    return [line.strip() for body in re.findall(r"^```\w*\n(.*?)^```", README.read_text(), flags=re.M | re.S)
            for line in body.splitlines()]


def argv_of(line: str) -> list[str]:
    """The nimtrail arguments of one `./dev` line (a `$(...)` counts as one argument)."""
    words = shlex.split(re.sub(r"\$\([^)]*\)", "SUBSTITUTED", line), comments=True)
    assert words[0] == "./dev", line
    return DEV_VERBS.get(words[1], words[1:]) if len(words) > 1 else []


def readme_commands() -> list[str]:
    return [line for line in code_lines() if line.startswith("./dev")]


def test_the_readme_shows_dev_commands_only():
    """After the two-command setup only ./dev is on hand: no bare `nimtrail` line to paste."""
    shown = [line for line in code_lines() if line.startswith("nimtrail ")]
    assert not shown, shown
    commands = {argv_of(line)[0] for line in readme_commands() if argv_of(line)}
    assert {"calls", "trace-back", "latency", "report", "verify", "findings", "usage"} <= commands


@pytest.mark.parametrize("line", readme_commands())
def test_every_readme_command_parses(line):
    argv = argv_of(line)
    if argv[:1] == ["test"]:
        return  # ./dev test passes its arguments to pytest
    try:
        parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"`{line}` does not parse (exit {e.code})")


@pytest.fixture
def running_warehouse(tmp_path: Path, kafka_bootstrap: str):
    env = Env(tmp_path, kafka_bootstrap)
    store = Store(env.config.warehouse_path)
    incident = app_world.seed(store, tmp_path / "sim")
    store.close()  # the warehouse process owns the file from here on
    env.start("warehouse")
    env.wait_ready("warehouse")
    yield env, incident
    env.stop_all()


@pytest.mark.integration
def test_the_readme_questions_run_as_written(running_warehouse, tmp_path):
    env, incident = running_warehouse
    work = tmp_path / "reader"
    work.mkdir()
    shell_env = {**{k: v for k, v in os.environ.items() if not k.startswith("NIMTRAIL_")},
                 "NIMTRAIL_CONFIG": str(env.path), "PYTHONPATH": str(REPO)}
    ran = {}
    for line in readme_commands():
        command = line.split()[1]  # the ./dev verb
        if command in NOT_RUN_HERE:
            continue
        # ./dev is nimtrail in .venv; the rest of the line (pipes, $(...)) is the shell's.
        script = line.replace("./dev", shlex.quote(sys.executable) + " -m nimtrail", 1)
        script = script.replace(PASTED_ID, incident["tool_call_id"])
        result = subprocess.run(["bash", "-c", script], cwd=work, env=shell_env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, f"`{line}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        ran[command] = result.stdout
    assert {"calls", "trace-back", "findings", "latency", "usage", "verify", "report"} <= set(ran)
    assert "oncall-bot" in ran["calls"]
    for seen in ("delete_records", "prod-db/customers", "oncall-bot", "prod/llama-3-1-8b"):
        assert seen in ran["trace-back"], seen
    assert "ungated_action" in ran["findings"]
    assert ran["verify"].startswith("verified:")
    assert (work / "report.json").exists()
