"""Drift raised live by the running pipeline: a registered deployment, NIM 1.x startup lines
through the collector's log ingest naming another profile → a `deployment_drift` finding
through the query API and `nimtrail findings`; the same lines from a NIM no record covers →
`unknown_deployment`."""

from __future__ import annotations

import datetime as dt
import http.client
import json
from pathlib import Path

import orjson
import pytest

from tests.harness import wait_for

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures" / "deployments"
DEPLOYMENT = "prod/llama-3-1-8b"  # as the governance file names it
PROFILE_ID = "3bb4e8fe78e5037b05dd618cebb1053347325ad6a1e709e0eb18bb8558362ac5"


def startup_lines(now: dt.datetime) -> list[dict]:
    """A NIM 1.x start as Fluent Bit forwards it: JSONL messages in Docker's json-file frame."""
    stamp = now.strftime("%m-%d %H:%M:%S.%f")[:-3]
    messages = [f"Valid profile: {PROFILE_ID} (vllm-bf16-tp1-pp1) on GPUs [0]",
                f"Selected profile: {PROFILE_ID} (vllm-bf16-tp1-pp1)",
                "Profile metadata: llm_engine: vllm", "Profile metadata: tp: 1"]
    return [{"date": now.timestamp(), "stream": "stderr", "time": now.isoformat().replace("+00:00", "Z"),
             "log": orjson.dumps({"level": "INFO", "time": stamp, "file_path": "/x/ngc_injector.py",
                                  "line_number": "141", "message": m, "exc_info": "None",
                                  "stack_info": "None"}).decode() + "\n"} for m in messages]


def post_logs(env, source: str, lines: list[dict]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", env.ports["http"], timeout=30)
    try:
        conn.request("POST", f"/v1/nimlogs?source={source}", body=b"\n".join(orjson.dumps(x) for x in lines),
                     headers={"Content-Type": "application/x-ndjson"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_running_nim_that_differs_from_its_record_raises_drift_live(env):
    env.cli("deployments", "register", str(FIXTURES / "llama-values.yaml"), str(FIXTURES / "llama-governance.yaml"),
            "--deployment", DEPLOYMENT)
    for stage in ("warehouse", "processor", "collector"):
        env.start(stage)
    for stage in ("warehouse", "processor", "collector"):
        env.wait_ready(stage)

    now = dt.datetime.now(dt.timezone.utc)
    request = [{"date": now.timestamp(), "stream": "stderr", "log": orjson.dumps({
        "level": "INFO", "time": now.strftime("%Y-%m-%d %H:%M:%S"), "file_name": "logger.py", "line_number": 39,
        "message": f"Received request chatcmpl-drift01: params: SamplingParams(n=1)"}).decode() + "\n"}]
    post_logs(env, DEPLOYMENT, startup_lines(now) + request)
    post_logs(env, "staging/llama-unreviewed", startup_lines(dt.datetime.now(dt.timezone.utc)))

    def findings(kind: str) -> list[dict]:
        return json.loads(env.cli("findings", "--kind", kind, "--each", "--json").stdout)["rows"]

    drift = {f["detail"]["field"]: f for f in wait_for(lambda: len(findings("deployment_drift")) >= 2 and
                                                       findings("deployment_drift"), 60, interval=0.5,
                                                       what="the drift findings")}
    # The record says tensorrt_llm-h100-fp8-tp2-pp1-throughput on 2 GPUs (values file).
    assert set(drift) == {"profile_name", "gpu_count"}
    profile = drift["profile_name"]["detail"]
    assert (profile["reviewed"], profile["observed"]) == ("tensorrt_llm-h100-fp8-tp2-pp1-throughput",
                                                          "vllm-bf16-tp1-pp1")
    assert profile["source"] == "nim-log" and profile["endpoint"] == DEPLOYMENT
    assert profile["source_line"] == f"Selected profile: {PROFILE_ID} (vllm-bf16-tp1-pp1)"
    assert (drift["gpu_count"]["detail"]["reviewed"], drift["gpu_count"]["detail"]["observed"]) == (2, 1)
    assert drift["profile_name"]["subject_ids"] == [f"{DEPLOYMENT}@1"]

    unknown = wait_for(lambda: findings("unknown_deployment"), 60, interval=0.5, what="unknown_deployment")
    assert [(f["subject_ids"], f["severity"]) for f in unknown] == [(["deployment:staging/llama-unreviewed"], "high")]

    # `nimtrail findings` as a user reads it, by the deployment version the drift is about.
    text = env.cli("findings", "--subject", f"{DEPLOYMENT}@1").stdout
    assert "deployment_drift" in text

    # Trace-back of a call that deployment version served shows the drift about it.
    def traced() -> dict | None:
        doc = json.loads(env.cli("trace-back", "--call-id", "chatcmpl-drift01", "--json").stdout)
        return doc if doc.get("deployment") else None

    back = wait_for(traced, 60, interval=0.5, what="the call's trace-back")
    assert back["call"]["deployment_version"] == 1
    assert {f["kind"] for f in back["findings"]} == {"deployment_drift"}
