"""The simulator on its own: what it serves over real HTTP (parsed with prometheus-client's
parser), the log files it writes, the files it leaves for registration, determinism."""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import simulator
from nimtrail.errors import ConfigError
from simulator import scenario as scenario_mod

CRI = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (stdout|stderr) ([PF]) (.*)$")


def small_logs(sc: scenario_mod.Scenario, **logs) -> scenario_mod.Scenario:
    return dataclasses.replace(sc, logs=dataclasses.replace(sc.logs, **logs))


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def families(url: str) -> dict:
    status, text = fetch(url)
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(text)}


def histogram_count(family) -> float:
    return sum(s.value for s in family.samples if s.name.endswith("_count"))


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    """One bounded run (30 simulated seconds, not in real time) with small log files, its
    servers left up for the tests to query."""
    out = tmp_path_factory.mktemp("sim")
    sc = small_logs(scenario_mod.load(), rotate_bytes=20_000, keep=2, cri_max_line=300)
    sim = simulator.Simulation(sc, simulator.Options(out_dir=out, duration=30, rate=6, realtime=False))
    sim.start()
    sim.run()
    yield sim
    sim.close()


def test_metrics_histograms_count_the_calls_made(played):
    names = {"prod/llama-3-1-8b": ("", "e2e_request_latency_seconds"),
             "prod/llama-3-3-70b": ("", "e2e_request_latency_seconds"),
             "prod/mistral-7b": ("vllm:", "vllm:e2e_request_latency_seconds"),
             "staging/qwen-2-5-7b": ("sglang:", "sglang:e2e_request_latency_seconds")}
    for deployment_id, (prefix, e2e) in names.items():
        dep = played.fleet[deployment_id]
        found = families(f"http://127.0.0.1:{dep.ports[0]}/v1/metrics")
        served = dep.calls_served()
        assert served > 0, deployment_id
        assert histogram_count(found[e2e]) == served, deployment_id
        ttft = found[f"{prefix}time_to_first_token_seconds"]
        assert histogram_count(ttft) == served
        model_labels = {s.labels.get("model_name") for s in ttft.samples}
        assert model_labels == {dep.spec.model}
        if prefix == "":  # NIM 1.x: unprefixed names, nothing from vLLM's namespace
            assert "request_success" in found and not any(n.startswith("vllm:") for n in found)
            assert sum(s.value for s in found["request_success"].samples
                       if s.name == "request_success_total") == served
        if prefix == "vllm:":
            assert "vllm:request_queue_time_seconds" in found and "vllm:cache_config_info" in found
            by_reason = {s.labels["finished_reason"] for s in found["vllm:request_success"].samples
                         if s.name.endswith("_total")}
            assert by_reason <= {"stop", "length", "tool_calls"} and by_reason
        assert "process_cpu_seconds" in found or "python_info" in found


def test_upgrade_restarts_the_pod_behind_the_same_port(played):
    dep = played.fleet["prod/llama-3-3-70b"]
    facts = [f for f in played.deployment_facts() if f["deployment_id"] == dep.spec.id]
    assert [f["revision"] for f in facts] == [1, 2]
    assert facts[0]["nim_image"] != facts[1]["nim_image"]
    assert facts[0]["profile_id"] != facts[1]["profile_id"]
    base = f"http://127.0.0.1:{dep.ports[0]}"
    meta = json.loads(fetch(f"{base}/v1/metadata")[1])
    assert meta["selectedModelProfileId"] == facts[1]["profile_id"] and meta["version"] == "1.8.4"
    assert json.loads(fetch(f"{base}/v1/version")[1]) == {"release": "1.8.4", "api": "1.0.0"}
    # The new pod's counters started from zero: they count only what it answered itself.
    assert dep.retired_pods and dep.retired_pods[0].served > 0
    assert histogram_count(families(f"{base}/v1/metrics")["e2e_request_latency_seconds"]) == dep.pod.served


def test_management_endpoints(played):
    dep = played.fleet["prod/llama-3-1-8b"]
    base = f"http://127.0.0.1:{dep.ports[0]}"
    status, body = fetch(f"{base}/v1/health/ready")
    assert status == 200 and json.loads(body)["object"] == "health.response"
    models = json.loads(fetch(f"{base}/v1/models")[1])
    assert [m["id"] for m in models["data"]] == ["meta/llama-3.1-8b-instruct"]
    assert fetch(f"{base}/v1/nothing")[0] == 404


def test_dcgm_exporter_serves_gpu_series(played):
    for dep in played.fleet.values():
        found = families(f"http://127.0.0.1:{dep.ports[1]}/metrics")
        util = [s for s in found["DCGM_FI_DEV_GPU_UTIL"].samples]
        assert len(util) == dep.pod.facts["gpu_count"]
        for sample in util:
            assert {"gpu", "UUID", "modelName", "Hostname", "pod", "namespace"} <= set(sample.labels)
            assert sample.labels["UUID"].startswith("GPU-")
            assert dep.spec.gpu in sample.labels["modelName"]
            assert sample.labels["pod"] == dep.pod.facts["pod"]
        assert "DCGM_FI_DEV_FB_USED" in found and "DCGM_FI_DEV_POWER_USAGE" in found


def _lines(paths: list[Path]) -> list[str]:
    return [line for p in paths for line in p.read_text().splitlines()]


def test_logs_mix_both_json_shapes_plain_text_and_rotate(played):
    out = played.out_dir
    v1 = sorted((out / "logs" / "prod" / "llama-3-3-70b").glob("nim.log*"))
    v2 = sorted((out / "logs" / "prod" / "mistral-7b").glob("nim.log*"))
    # Rotated by size, keeping two old files, as configured.
    assert [p.name for p in v1] == ["nim.log", "nim.log.1", "nim.log.2"]
    records_v1 = [json.loads(l) for l in _lines(v1) if l.startswith("{")]
    records_v2 = [json.loads(l) for l in _lines(v2) if l.startswith("{")]
    assert records_v1 and all(isinstance(r["line_number"], str) and "file_path" in r
                              and re.fullmatch(r"\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", r["time"]) for r in records_v1)
    assert records_v2 and all(isinstance(r["line_number"], int) and "file_name" in r
                              and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", r["time"]) for r in records_v2)
    messages_v1 = [r["message"] for r in records_v1]
    # The upgrade's startup lines name the new profile; access lines from uvicorn.
    facts = {f["revision"]: f for f in played.deployment_facts() if f["deployment_id"] == "prod/llama-3-3-70b"}
    assert f"Selected profile: {facts[2]['profile_id']} ({facts[2]['profile_name']})" in messages_v1
    assert "Profile metadata: llm_engine: tensorrt_llm" in messages_v1
    assert any(re.fullmatch(r'[\d.]+:\d+ - "POST /v1/chat/completions HTTP/1.1" 200', m) for m in messages_v1)
    plain = [l for l in _lines(v1) if l and not l.startswith("{")]
    assert any("[TRT-LLM]" in l for l in plain)
    assert any(re.match(r"INFO \d\d-\d\d \d\d:\d\d:\d\d metrics.py:\d+\] Avg prompt throughput", l) for l in plain)
    assert any("Engine 000: Avg prompt throughput" in r["message"] for r in records_v2)
    assert not any("Selected profile" in r["message"] for r in records_v2)  # 2.x: read /v1/metadata


def test_cri_wrapped_logs_join_back_into_the_lines(played):
    pods = sorted((played.out_dir / "logs" / "pods").glob("prod_llama-3-1-8b-*/nim-llm"))
    assert len(pods) == 1
    files = sorted(pods[0].iterdir())
    assert len(files) == 3 and any(re.fullmatch(r"0\.log\.\d{8}-\d{6}(-\d+)?", f.name) for f in files)
    joined, partial, tags = [], "", set()
    for raw in _lines(sorted(files, key=lambda p: p.stat().st_mtime)):
        m = CRI.match(raw)
        assert m, raw
        tags.add(m.group(3))
        partial += m.group(4)
        if m.group(3) == "F":
            joined.append(partial)
            partial = ""
    assert tags == {"P", "F"}  # long lines were split by the runtime
    received = [json.loads(l)["message"] for l in joined if l.startswith("{") and "Received request" in l]
    assert received and all(m.startswith("Received request chat-") and "prompt: " in m for m in received)
    # Plain text survives inside the wrapping (vLLM's worker lines are not JSON).
    assert any(re.match(r"INFO \d\d-\d\d \S+ metrics.py:\d+\] Avg prompt throughput", l) for l in joined)


def test_registration_files_match_the_facts(played):
    facts = simulator.deployment_facts(played.scenario, played.seed)
    assert {f["engine_backend"] for f in facts} == {"vllm", "tensorrt_llm", "sglang"}
    assert {f["gpu_type"] for f in facts} == {"H100", "A100", "L40S"}
    for fact in facts:
        d = played.out_dir / "deployments" / fact["deployment_id"]
        values = yaml.safe_load((d / f"values-r{fact['revision']}.yaml").read_text())
        assert f"{values['image']['repository']}:{values['image']['tag']}" == fact["nim_image"]
        assert values["model"]["name"] == fact["model_id"]
        env = {e["name"]: e.get("value") for e in values["env"]}
        assert env["NIM_MODEL_PROFILE"] == fact["profile_name"]
        metadata = json.loads((d / f"metadata-r{fact['revision']}.json").read_text())
        assert metadata["selectedModelProfileId"] == fact["profile_id"] and len(fact["profile_id"]) == 64
        assert values["resources"]["limits"]["nvidia.com/gpu"] == fact["gpu_count"]
        assert values["nodeSelector"]["nvidia.com/gpu.product"] == fact["gpu_product"]
        gov = yaml.safe_load((d / "governance.yaml").read_text())
        assert gov["deployment"] == fact["deployment_id"] and gov["purpose"] == fact["purpose"]
        assert gov["tool_servers"] == fact["tool_servers"]
    summariser = yaml.safe_load((played.out_dir / "deployments/prod/llama-3-1-8b/governance.yaml").read_text())
    assert summariser["tool_calling_allowed"] is False and "ops-agent" not in summariser["allowed_clients"]


def test_incident_file_names_the_destructive_action(played):
    inc = json.loads((played.out_dir / simulator.INCIDENT_FILE).read_text())
    assert inc["tool"] == "delete_records" and inc["gate"] == "policy"
    assert inc["gate_decision"] == "auto_approved" and inc["deployment_id"] == "prod/llama-3-1-8b"
    assert inc["client_service"] == "ops-agent" and inc["caller"] == "oncall-bot"
    assert re.fullmatch(r"chatcmpl-tool-[0-9a-f]{32}", inc["tool_call_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", inc["action_id"])
    assert inc["command"] == f"nimtrail trace-back --tool-call-id {inc['tool_call_id']}"


def _ids(tmp: Path, seed: int) -> tuple[dict, list[str]]:
    sc = scenario_mod.load()
    sim = simulator.run(sc, simulator.Options(out_dir=tmp, seed=seed, duration=8, rate=5, realtime=False))
    log = (tmp / "logs" / "prod" / "mistral-7b" / "nim.log").read_text()
    return sim.incident, re.findall(r"Received request (\S+):", log)


def test_a_seed_reproduces_the_ids_and_sequence(tmp_path):
    first = _ids(tmp_path / "a", 11)
    again = _ids(tmp_path / "b", 11)
    other = _ids(tmp_path / "c", 12)
    assert first[0]["tool_call_id"] == again[0]["tool_call_id"]
    assert first[0]["action_id"] == again[0]["action_id"] and first[0]["call_id"] == again[0]["call_id"]
    assert first[1] and first[1] == again[1]
    assert other[0]["tool_call_id"] != first[0]["tool_call_id"] and other[1] != first[1]


def test_scenario_errors_name_the_key(tmp_path):
    doc = yaml.safe_load((Path(simulator.__file__).parent / "scenarios" / "default.yaml").read_text())
    doc["clients"][1]["deployment"] = "prod/nope"
    with pytest.raises(ConfigError, match=r"clients\[1\]\.deployment: unknown deployment 'prod/nope'"):
        scenario_mod.parse(doc)
    doc = yaml.safe_load((Path(simulator.__file__).parent / "scenarios" / "default.yaml").read_text())
    doc["deployments"][0]["gpuu"] = "H100"
    with pytest.raises(ConfigError, match=r"deployments\[0\]\.gpuu: unknown key"):
        scenario_mod.parse(doc)


def test_a_server_that_never_started_stops_at_once():
    from simulator.nim_http import Server

    server = Server(0, {})
    server.stop()  # must not wait for a serve_forever that never ran


def test_a_resumed_run_continues_the_scenario_instead_of_replaying_it(tmp_path):
    sc = small_logs(scenario_mod.load(), rotate_bytes=20_000, keep=2)
    first = simulator.run(sc, simulator.Options(out_dir=tmp_path, duration=30, rate=2, realtime=False, seed=11))
    assert first.incident is not None and first.counts["upgrades"] == 1
    incident = json.loads((tmp_path / simulator.INCIDENT_FILE).read_text())

    again = simulator.run(sc, simulator.Options(out_dir=tmp_path, duration=30, rate=2, realtime=False, seed=12,
                                                resume=True))
    # No second incident, no rollout again, no rollback to the image the upgrade replaced.
    assert again.incident is None and again.counts["upgrades"] == 0
    assert json.loads((tmp_path / simulator.INCIDENT_FILE).read_text()) == incident
    rollouts = json.loads((tmp_path / "deployments" / "prod" / "llama-3-3-70b" / "rollouts.json").read_text())
    assert [r["revision"] for r in rollouts] == [2]
    assert simulator.read_progress(tmp_path).played == pytest.approx(60, abs=1)

    fresh = simulator.run(sc, simulator.Options(out_dir=tmp_path, duration=30, rate=2, realtime=False, seed=13))
    assert fresh.incident is not None, "without --resume the scenario starts over"


def test_the_demo_runs_the_simulator_on_the_scenario_it_was_given(tmp_path: Path):
    """`nimtrail up --demo --scenario FILE`: the simulator child plays FILE, not the
    built-in scenario (the demo read FILE for its own announcements only)."""
    from cli.demo import Demo
    from nimtrail import config as config_mod

    text = (Path(simulator.__file__).parent / "scenarios" / "default.yaml").read_text()
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    config = dataclasses.replace(config_mod.Config(), data_dir=str(tmp_path / "data"))
    [(_name, args)] = Demo(config, None, str(path)).children()
    assert args[args.index("--scenario") + 1] == str(path.resolve())
    [(_name, args)] = Demo(config, None).children()
    assert "--scenario" not in args
