"""The simulator feeding the real pipeline: its spans go through the OTLP exporter to the
collector, Kafka, the processor and the warehouse, and the incident is traced back through
the CLI. The second test runs the one-command demo (`nimtrail up --demo`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

import simulator
from cli.broker import free_port
from simulator import scenario as scenario_mod
from tests.alert_receiver import HOOK_PATH, AlertReceiver
from tests.harness import REPO, Env, http_ok, scrape, wait_for

SENT_AWAY = "nimtrail_processor_sent_away_evidence_total"


def _trace_back(env, tool_call_id: str):
    result = env.cli("trace-back", "--tool-call-id", tool_call_id, "--json", check=False)
    doc = json.loads(result.stdout) if result.stdout.strip() else {}
    if doc.get("call") and doc.get("actions") and doc["actions"][0].get("call_id") and doc["call"].get("ttft_ms"):
        return doc
    return None


def test_incident_is_traced_back_to_the_model_call_and_caller(env, tmp_path):
    for stage in ("warehouse", "processor", "collector"):
        env.start(stage)
    for stage in ("warehouse", "processor", "collector"):
        env.wait_ready(stage)

    # 12 simulated seconds played back to back, spans through the real OTLP/HTTP exporter.
    sim = simulator.run(scenario_mod.load(), simulator.Options(
        out_dir=tmp_path / "sim", seed=3, duration=12, rate=4, otlp=env.otlp_http, realtime=False))
    incident = json.loads((tmp_path / "sim" / simulator.INCIDENT_FILE).read_text())
    assert incident == sim.incident

    doc = wait_for(lambda: _trace_back(env, incident["tool_call_id"]), timeout=60,
                   what="the incident's chain in the warehouse")
    [action] = doc["actions"]
    assert action["action_id"] == incident["action_id"]
    assert action["tool_name"] == "delete_records" and action["target"] == "prod-db/customers"
    assert action["gate"] == "policy" and action["gate_decision"] == "auto_approved"
    assert action["policy_id"] == "ops-auto-remediation-v3"
    assert action["call_id"] == incident["call_id"]
    call = doc["call"]
    assert call["call_id"] == incident["call_id"] and call["finish_reason"] == "tool_calls"
    assert call["tool_call_ids"] == [incident["tool_call_id"]]
    assert sorted(call["signals"]) == ["span.client", "span.nim"]  # both views merged
    assert doc["caller"]["caller"] == "oncall-bot" and doc["caller"]["client_service"] == "ops-agent"

    # Every model call the simulator made is recorded once, whether or not its client
    # propagated trace context to NIM (analytics-notebook does not).
    def all_calls():
        rows = json.loads(env.cli("calls", "--json", "--limit", "1000").stdout)["rows"]
        return rows if len(rows) >= sim.counts["model_calls"] else None

    rows = wait_for(all_calls, timeout=60, what=f"{sim.counts['model_calls']} model calls")
    assert len(rows) == sim.counts["model_calls"]
    unpropagated = [r for r in rows if r["client_service"] == "analytics-notebook"]
    assert unpropagated and all(sorted(r["signals"]) == ["span.client", "span.nim"] for r in unpropagated)


def _children_running(parent: int, stages: tuple[str, ...]) -> dict[str, int]:
    """{stage: pid} of the processes `parent` started as `nimtrail <stage>`."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid != parent or b"nimtrail" not in argv:
            continue
        args = argv[argv.index(b"nimtrail") + 1:]
        if args[:1] == [b"--config"]:
            args = args[2:]
        if args and args[0].decode() in stages:  # (a shard or a standby: the first of its stage)
            found.setdefault(args[0].decode(), int(stat.parent.name))
    return found


def _sooner(env) -> Path:
    """The built-in scenario with its incident 2 s and its upgrades 8 s after the start
    (instead of 6 s and 20 s): the same fleet, clients and incident, in the same order,
    without a demo run waiting on the clock."""
    path = env.dir / "scenario.yaml"
    if not path.exists():
        doc = yaml.safe_load(resources.files("simulator.scenarios").joinpath(scenario_mod.DEFAULT).read_text())
        doc["incident"]["at"] = "2s"
        for deployment in doc["deployments"]:
            for upgrade in deployment.get("upgrades", ()):
                upgrade["at"] = "8s"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _demo(env, run: int, resumed: dict | None = None, processors: int = 1, shards: int = 1,
          partitions: int = 0, running: Callable[[], None] = lambda: None) -> dict:
    """One `nimtrail up --demo [--processors N] [--partitions P] [--shards M]` until its incident is traced back, then
    Ctrl-C. `resumed`: the incident of an earlier run on the same data directory, which a
    resumed demo reports instead of playing a new one. `running`: more to check while the
    pipeline still runs."""
    data = Path(env.config.data_dir)
    log_path = env.dir / f"up-{run}.log"
    log = open(log_path, "w")
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("NIMTRAIL_")}
    scenario = _sooner(env)
    up = subprocess.Popen([sys.executable, "-m", "nimtrail", "--config", str(env.path), "up", "--demo",
                           "--scenario", str(scenario), "--duration", "90", "--processors", str(processors),
                           "--shards", str(shards), "--partitions", str(partitions)], cwd=REPO, env=clean_env,
                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    path = data / "simulator" / simulator.INCIDENT_FILE
    earlier = path.read_text() if path.exists() else None  # the previous run's, until replaced

    def incident():
        assert up.poll() is None, log_path.read_text()
        if resumed is not None:
            return resumed
        text = path.read_text() if path.exists() else None
        return text and text != earlier and json.loads(text)

    try:
        found = wait_for(incident, timeout=75, interval=0.5, what="the demo's incident")
        command = f"trace-back --tool-call-id {found['tool_call_id']}"
        wait_for(lambda: command in log_path.read_text(), timeout=45, interval=0.5,
                 what="the demo to print the trace-back command")
        doc = wait_for(lambda: _trace_back(env, found["tool_call_id"]), timeout=30,
                       what="the incident's chain through the demo")
        assert doc["actions"][0]["tool_name"] == "delete_records"
        assert doc["caller"]["caller"] == "oncall-bot"
        printed = log_path.read_text()
        assert f"nimtrail --config {env.path} {command}" in printed  # ready to paste
        app_url = f"http://127.0.0.1:{env.ports['app']}"
        assert f"{app_url}/?tool_call_id={found['tool_call_id']}" in printed  # the app, opened on it
        wait_for(lambda: http_ok(f"{app_url}/_stcore/health"), timeout=30, what="the demo's app to serve")
        # The simulated fleet is up where the demo said it would be.
        described = json.loads((data / "simulator" / simulator.RUN_FILE).read_text())
        assert described["deployments"][0]["metrics_url"] in printed and "(DCGM)" in printed
        if resumed is not None:  # what the earlier run recorded is still there
            assert _trace_back(env, resumed["tool_call_id"])["call"]["call_id"] == resumed["call_id"]
        # The demo registers its fleet, each revision as it rolls out, one registration at a
        # time: the scenario's upgrades too, which can come after the incident.
        final = {d.id: len(d.upgrades) + 1 for d in scenario_mod.load(scenario).deployments}

        def registered():
            rows = json.loads(env.cli("deployments", "list", "--json").stdout)["rows"]
            return {r["deployment_id"]: r["version"] for r in rows} == final

        wait_for(registered, timeout=90, interval=1, what="the simulated fleet's revisions to be registered")
        # The calls page names each call's actions (one index lookup for the page's calls).
        calls = json.loads(env.cli("calls", "--json", "--limit", "1000").stdout)["rows"]
        [asked] = [c for c in calls if c["call_id"] == doc["call"]["call_id"]]
        assert "delete_records" in [a["tool_name"] for a in asked["actions"]]
        # The stages `up` runs keep pandas out (nimtrail/import_guard.py).
        stages = _children_running(up.pid, ("collector", "processor", "warehouse"))
        assert sorted(stages) == ["collector", "processor", "warehouse"], stages
        for stage, pid in stages.items():
            assert "/pandas/" not in Path(f"/proc/{pid}/maps").read_text(), f"the {stage} loaded pandas"
        # One processor reads the input and the others (on the ops port + k) stand by; or, with
        # partitions, each holds a share. (A member that joined a moment ago has no state to
        # report yet: the group may still settle.)
        ops = env.config.processor.ops
        wanted = [1] * processors if partitions else [0] * (processors - 1) + [1]

        def settled():
            states = [scrape(f"http://{ops.host}:{ops.port + k}/metrics").get("nimtrail_processor_active_members")
                      for k in range(processors)]
            return None not in states and sorted(states) == wanted

        wait_for(settled, timeout=60, interval=0.5, what="the processor group to settle")
        # What keeping the join state costs is counted by the members that hold it: the
        # changelog entries written, and the batches taken through to committed offsets.
        members = [scrape(f"http://{ops.host}:{ops.port + k}/metrics") for k in range(processors)]
        assert sum(m.get("nimtrail_processor_state_changes_entries_total", 0) for m in members) > 0
        assert sum(m.get("nimtrail_processor_delivered_batches_total", 0) for m in members) > 0
        running()
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C stops everything
        code = up.wait(timeout=60)
        log.close()
    assert code == 0
    assert "nimtrail: stopped" in log_path.read_text()
    assert (data / "simulator" / simulator.SUMMARY_FILE).exists()  # the simulator closed cleanly
    return found


def test_up_demo_prints_a_trace_back_command_and_resumes(env):
    def latest() -> dict[str, int]:
        return {r["deployment_id"]: r["version"] for r in json.loads(env.cli("deployments", "list", "--json").stdout)["rows"]}

    first = _demo(env, 1)
    assert json.loads((Path(env.config.data_dir) / "simulator" / "progress.json").read_text())["incident"]
    versions = latest()
    # A second run on the same data directory continues the scenario: the same incident (no
    # second one), and the upgraded deployment keeps its version (no rollback registered).
    _demo(env, 2, resumed=first, processors=2)  # with a standby processor beside the one reading
    assert json.loads((Path(env.config.data_dir) / "simulator" / simulator.INCIDENT_FILE).read_text()) == first
    assert latest() == versions


def test_up_demo_on_two_processors_sharing_the_join_and_two_warehouse_shards_traces_its_incident_back(
        tmp_path, kafka_bootstrap):
    """`nimtrail up --demo --processors 2 --partitions 4 --shards 2`: two processors each
    joining its share of four evidence partitions, two warehouse processes each writing its
    share of the audit partitions, and the query API (shard 0) answering the demo's
    trace-back, the calls page and the deployments list over both. The incident's finding
    reaches the webhook once per finding group, though the groups' findings are spread
    over both shards."""
    receiver = AlertReceiver(free_port()).start()
    env = Env(tmp_path, kafka_bootstrap, alerts={"webhook_url": f"{receiver.url}{HOOK_PATH}", "interval": "1s"})

    def alerted_once() -> None:
        wait_for(lambda: any(h["kind"] == "ungated_action" and h["tool"] == "delete_records"
                             for h in receiver.hooks()), timeout=90, interval=1,
                 what="the incident's ungated_action alert at the webhook")
        time.sleep(3)  # a few alert turns more: nothing repeats
        groups = [(h["kind"], h["deployment"], h["tool"], h["policy"]) for h in receiver.hooks()]
        assert len(groups) == len(set(groups)), groups
        # The collector placed each trace's spans in its partition, which the member joining
        # that evidence partition reads: no span evidence went through the evidence topic
        # from the normaliser. Calls still go to and from their homes.
        sent = {}
        ops = env.config.processor.ops
        for k in range(2):  # `up` gives the k-th member the ops port + k
            for name, value in scrape(f"http://127.0.0.1:{ops.port + k}/metrics").items():
                if name.startswith(SENT_AWAY):
                    sent[name] = sent.get(name, 0) + value
        assert not {n: v for n, v in sent.items() if 'by="normaliser"' in n and 'source="span.' in n}, sent
        assert sum(v for n, v in sent.items() if 'by="joiner"' in n) > 0, sent

    try:
        _demo(env, 1, processors=2, partitions=4, shards=2, running=alerted_once)
    finally:
        env.stop_all()
        receiver.stop()
    shards = Path(env.config.data_dir) / "shards"
    assert sorted(p.name for p in shards.iterdir() if p.is_dir()) == ["0-of-2", "1-of-2"]
    doc = json.loads(env.cli("verify", "--json").stdout)  # offline now: every shard's file
    assert doc["ok"], doc["problems"]
    assert [s["shard"] for s in doc["shards"]] == ["shard 0 of 2", "shard 1 of 2"]
    assert all(s["rows_checked"]["model_calls"] for s in doc["shards"])
