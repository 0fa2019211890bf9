"""Canonical records for the warehouse tests, and a store opened on a temporary file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from nimtrail import records
from nimtrail.ops import StageMetrics
from warehouse.checkpoint import Checkpointer
from warehouse.store import Store

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def ago(days: float = 0, hours: float = 0, minutes: float = 0) -> str:
    t = NOW - dt.timedelta(days=days, hours=hours, minutes=minutes)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def deployment(deployment_id: str = "prod/llama", version: int = 1, **values: Any) -> dict:
    base = dict(valid_from=ago(days=400), nim_image="nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.0",
                model_id="meta/llama-3.1-8b-instruct", profile_name="vllm-bf16-tp1-pp1",
                gpu_type="H100", gpu_count=1, purpose="summarisation", lora={"adapters": []},
                observed_at=ago())
    return records.new("deployment", deployment_id=deployment_id, version=version, **{**base, **values})


def call(call_id: str, *, days: float = 0, version: int = 1, **values: Any) -> dict:
    base = dict(trace_id="t-" + call_id, started_at=ago(days=days), ended_at=ago(days=days),
                deployment_id="prod/llama", deployment_version=1, model="meta/llama-3.1-8b-instruct",
                operation="chat", caller="alice", client_service="ops-agent", status="ok",
                http_status=200, finish_reason="tool_calls", input_tokens=12, output_tokens=30,
                ttft_ms=40.0, e2e_ms=400.0, queue_ms=2.0, tool_call_ids=["tc-" + call_id],
                tool_names=["delete_record"], prompt_sha256="a" * 64, response_sha256="b" * 64,
                prompt_text="please delete order 42", response_text="calling delete_record",
                signals=["span.client", "span.nim"], observed_at=ago(days=days))
    return records.new("model_call", call_id=call_id, version=version, **{**base, **values})


def action(action_id: str, call_id: str, *, days: float = 0, **values: Any) -> dict:
    base = dict(tool_call_id="tc-" + call_id, started_at=ago(days=days), tool_name="delete_record",
                arguments='{"order": 42}', arguments_sha256="c" * 64, gate="policy",
                gate_decision="approved", outcome="ok", target="prod-db/orders/42", call_id=call_id,
                observed_at=ago(days=days))
    return records.new("tool_action", action_id=action_id, version=values.pop("version", 1),
                       **{**base, **values})


def sample(sample_id: str, ts: str, metric: str, buckets: Any, deployment_id: str = "prod/llama",
           **values: Any) -> dict:
    return records.new("metric_sample", sample_id=sample_id, ts=ts, deployment_id=deployment_id,
                       metric=metric, labels=values.pop("labels", {"model_name": "llama"}),
                       value=values.pop("value", None), buckets=buckets, version=1, observed_at=ts,
                       **values)


def write(store: Store, kind: str, recs: list[dict]) -> None:
    store.write(store.frames({kind: recs}), [])


def checkpointer(store: Store, data_dir: Path) -> Checkpointer:
    return Checkpointer(store, data_dir, 0, StageMetrics("warehouse"))
