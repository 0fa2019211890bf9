"""Every documented command as a user types it, while `nimtrail up --demo` runs with the
default setup: an empty kafka.bootstrap (the bundled broker of data_dir), global options
before or after the command name. Ports are the only keys set, so the suite's own broker
and stages are not in the way."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from cli.broker import free_port
from tests.harness import REPO, wait_for

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures" / "deployments"


def start_demo(config: Path, env: dict[str, str], out: Path) -> tuple[subprocess.Popen, str]:
    """`nimtrail up --demo` as a user starts it; returns it once it printed the incident."""
    with open(out, "wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "nimtrail", "--config", str(config), "up", "--demo"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)

    def incident() -> str | None:
        if up.poll() is not None:
            raise AssertionError(f"nimtrail up exited with {up.returncode}:\n{out.read_text()[-3000:]}")
        found = re.search(r"trace-back --tool-call-id (\S+)", out.read_text())
        return found and found.group(1)

    try:
        return up, wait_for(incident, 300, interval=0.5, what="the demo to print the incident")
    except BaseException:
        stop_demo(up)
        raise


def stop_demo(up: subprocess.Popen) -> int:
    """Ctrl-C, as a user stops it."""
    if up.poll() is None:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    return up.returncode


@pytest.fixture
def running_demo(tmp_path: Path):
    config = tmp_path / "nimtrail.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "kafka": {"bootstrap": "", "port": free_port()},
        "collector": {"otlp_http": f"127.0.0.1:{free_port()}", "otlp_grpc": f"127.0.0.1:{free_port()}"},
        "processor": {"ops": f"127.0.0.1:{free_port()}"},
        "warehouse": {"api": f"127.0.0.1:{free_port()}"},
        "app": {"port": free_port()},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIMTRAIL_")}
    out = tmp_path / "up.log"
    up, tool_call_id = start_demo(config, env, out)
    try:
        yield config, env, tool_call_id, up, out
    finally:
        stop_demo(up)


@pytest.mark.timeout(600)  # a demo start with its own broker, on a loaded machine
def test_every_command_works_on_the_default_setup_while_up_runs(running_demo, tmp_path):
    config, env, tool_call_id, up, out = running_demo

    def nimtrail(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "nimtrail", *args], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"nimtrail {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result

    # --config after the command name, as the README writes it.
    shown = nimtrail("check", "--config", str(config), "--show")
    assert yaml.safe_load(shown.stdout.split("\n", 1)[1])["kafka"]["bootstrap"] == ""

    back = orjson.loads(nimtrail("trace-back", "--tool-call-id", tool_call_id, "--json", "--config", str(config)).stdout)
    assert back["found"] and back["call"]["caller"] == "oncall-bot"
    assert back["call"]["deployment_id"] == "prod/llama-3-1-8b"
    calls = orjson.loads(nimtrail("--config", str(config), "calls", "--caller", "oncall-bot", "--json").stdout)
    assert tool_call_id in {t for row in calls["rows"] for t in row["tool_call_ids"] or ()}

    # The governance commands talk to the bundled broker themselves (meanwhile the
    # incident's records settle for the demo's join window).
    registered = nimtrail("deployments", "register", str(FIXTURES / "llama-values.yaml"),
                          "--deployment", "test/llama", "--config", str(config))
    assert registered.stdout.strip() == "test/llama: registered version 1"
    upgrade = tmp_path / "values-upgrade.yaml"
    upgrade.write_text((FIXTURES / "llama-values.yaml").read_text().replace('tag: "1.3.3"', 'tag: "1.8.4"'))
    assert "registered version 2" in nimtrail("--config", str(config), "deployments", "register", str(upgrade),
                                              "--deployment", "test/llama").stdout
    manifest = nimtrail("deployments", "register", str(FIXTURES / "nimservice.yaml"), "--config", str(config))
    assert "registered version 1" in manifest.stdout
    listed = nimtrail("deployments", "list", "--json", "--config", str(config))
    ids = {row["deployment_id"] for row in orjson.loads(listed.stdout)["rows"]}
    assert {"test/llama", "prod/llama-3-1-8b"} <= ids
    show = orjson.loads(nimtrail("deployments", "show", "test/llama", "--json", "--config", str(config)).stdout)
    assert show["version"] == 2 and show["nim_image"].endswith(":1.8.4")
    diff = orjson.loads(nimtrail("deployments", "diff", "test/llama", "--json", "--config", str(config)).stdout)
    assert [c["field"] for c in diff["changes"]] == ["nim_image"]

    def kinds() -> set[str]:
        return {row["kind"] for row in orjson.loads(nimtrail("findings", "--json", "--config", str(config)).stdout)["rows"]}

    # Findings are judged once the incident's records settle (the demo's join window).
    wait_for(lambda: "ungated_action" in kinds(), 120, interval=2, what="the incident's findings")

    # The 70B's upgrade, with its calls' latency before and after; no call of the fleet is
    # left without its deployment (none is stamped before the revision serving it went live).
    def upgrade() -> dict | None:
        changes = orjson.loads(nimtrail("latency", "--changes", "--json", "--config", str(config)).stdout)["rows"]
        found = [c for c in changes if c["deployment_id"] == "prod/llama-3-3-70b"]
        # A call's record is written again as its evidence arrives: the first version of the
        # first call after the upgrade can come before what gives its time to first token.
        return found[0] if found and found[0]["ttft_ms_p95_after"] and found[0]["ttft_ms_p95_before"] else None

    change = wait_for(upgrade, 180, interval=3, what="calls with their TTFT on both sides of the 70B upgrade")
    assert change["calls_before"] and change["calls_after"]
    assert (change["from_version"], change["to_version"]) == (1, 2)
    assert change["before"]["profile_name"] != change["after"]["profile_name"]
    assert change["ttft_ms_p95_change_pct"] == round(
        100 * (change["ttft_ms_p95_after"] - change["ttft_ms_p95_before"]) / change["ttft_ms_p95_before"], 1)
    shown = nimtrail("latency", "--changes", "--config", str(config)).stdout
    assert "prod/llama-3-3-70b" in shown and "v1 -> v2" in shown and "p95 change" in shown

    def unmatched() -> list:
        by_version = orjson.loads(nimtrail("latency", "--by", "deployment", "--json", "--config", str(config)).stdout)
        return [r for r in by_version["rows"] if not r["deployment_id"]]

    wait_for(lambda: not unmatched(), 60, interval=3, what="every call matched to its deployment")

    assert stop_demo(up) == 0
    assert "nimtrail: stopped" in out.read_text()
