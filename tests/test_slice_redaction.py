"""Redaction through the running pipeline (OTel SDK → collector → Kafka → processor →
warehouse → CLI): free text in a tool's error and target is stored redacted, and a huge
prompt kept by policy neither stalls the processor nor is stored whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nimtrail.redaction import TRUNCATED
from tests.harness import Env, http_ok, wait_for
from tests.otel_agent import send_agent_trace
# The corpus's governance records: delete_record is destructive on the llama deployment the
# agent trace calls, so an automatically approved run of it is an ungated_action.
from tests.test_processors_kafka import register_deployments

pytestmark = pytest.mark.integration


def _start(env: Env) -> None:
    for stage in ("warehouse", "processor", "collector"):
        env.start(stage)
    for stage in ("warehouse", "processor", "collector"):
        env.wait_ready(stage)


def _trace_back(env: Env, tool_call_id: str, complete) -> dict:
    def chain():
        result = env.cli("trace-back", "--tool-call-id", tool_call_id, "--json", check=False)
        doc = json.loads(result.stdout) if result.stdout.strip() else {}
        return doc if complete(doc) else None
    return wait_for(chain, timeout=90, what="the trace-back chain")


def test_emails_in_a_tools_error_and_target_are_stored_redacted(tmp_path: Path, kafka_bootstrap: str):
    env = Env(tmp_path, kafka_bootstrap, processor={"join_window": "1s"})
    try:
        register_deployments(env)
        _start(env)
        sent = send_agent_trace(env.otlp_http, target="mailbox:eve.admin@example.com/inbox/42",
                                error_type="PermissionDenied: eve.admin@example.com may not delete")
        doc = _trace_back(env, sent["tool_call_id"], lambda d: d.get("actions") and d["actions"][0]["call_id"])
        action = doc["actions"][0]
        assert action["outcome"] == "error"
        assert action["error"] == "PermissionDenied: [REDACTED:email] may not delete"
        assert action["target"] == "mailbox:[REDACTED:email]/inbox/42"

        # The finding that quotes the target quotes it redacted.
        def ungated():
            found = json.loads(env.cli("findings", "--each", "--json").stdout)["rows"]
            return [f for f in found if f["kind"] == "ungated_action"]
        (finding,) = wait_for(ungated, timeout=60, what="the ungated_action finding")
        detail = finding["detail"] if isinstance(finding["detail"], dict) else json.loads(finding["detail"])
        assert detail["target"] == "mailbox:[REDACTED:email]/inbox/42"
        everything = env.cli("trace-back", "--tool-call-id", sent["tool_call_id"]).stdout + \
            env.cli("findings", "--each", "--json").stdout + env.cli("findings", "--json").stdout
        assert "eve.admin@example.com" not in everything
    finally:
        env.stop_all()


def test_a_4mib_prompt_kept_by_policy_is_cut_and_the_processor_stays_healthy(tmp_path: Path,
                                                                              kafka_bootstrap: str):
    env = Env(tmp_path, kafka_bootstrap, processor={"content": {"keep_prompts": True}})
    try:
        _start(env)
        sent = send_agent_trace(env.otlp_http, prompt="mail bob@example.com " + "P" * (4 << 20))
        processor = f"http://127.0.0.1:{env.ports['ops']}/healthz"
        seen = []

        def stored():
            seen.append(http_ok(processor))  # asked while the prompt is being processed
            result = env.cli("trace-back", "--tool-call-id", sent["tool_call_id"], "--json", check=False)
            doc = json.loads(result.stdout) if result.stdout.strip() else {}
            return (doc.get("call") or {}).get("prompt_text")
        text = wait_for(stored, timeout=120, what="the call with its kept prompt")
        assert all(seen[1:]), "the processor's /healthz stopped answering"
        assert "[REDACTED:email]" in text and "bob@example.com" not in text
        head, marker = text.split(TRUNCATED)
        # At most max_text_bytes of the prompt were scanned and kept (a marker may be
        # longer than what it replaced).
        scanned = head.replace("[REDACTED:email]", "bob@example.com")
        assert len(scanned.encode()) <= env.config.processor.content.max_text_bytes
        assert marker.startswith(", ") and " bytes, sha256:" in marker
        assert http_ok(processor)
    finally:
        env.stop_all()
