"""Canonical records: the field names every stage, table, API answer and CLI output share.

Records travel as plain dicts (cheap to build on the hot path) whose keys are exactly the
fields below. Every record carries `version` and `observed_at`: a later, better-informed
emission of the same record has a higher version and the warehouse keeps the highest.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import orjson

# Times are formatted in one place; records re-exports the two every stage uses.
from nimtrail.timestamps import iso_from_ns, now_iso  # noqa: F401

SCHEMA_VERSION = 1

DEPLOYMENT_FIELDS = (
    "deployment_id", "version", "valid_from", "source", "nim_image", "image_digest",
    "nim_release", "model_id", "model_source", "engine_backend", "profile_id", "profile_name",
    "precision", "tensor_parallel", "pipeline_parallel", "lora", "gpu_type", "gpu_device",
    "gpu_count", "container_config", "env", "api_surface", "health_endpoints", "logging_mode",
    "metrics_endpoint", "tracing_config", "tool_calling", "deploy_path", "update_channel",
    "purpose", "tool_calling_allowed", "allowed_clients", "tool_servers", "destructive_tools",
    "reviewed_by", "identities", "field_sources", "observed_at",
)

MODEL_CALL_FIELDS = (
    "call_id", "trace_id", "span_id", "started_at", "ended_at", "deployment_id",
    "deployment_version", "model", "operation", "caller", "client_service", "client_address",
    "api_key_fingerprint", "status", "http_status", "finish_reason", "input_tokens",
    "output_tokens", "ttft_ms", "e2e_ms", "queue_ms", "tool_call_ids", "tool_names",
    "prompt_sha256", "response_sha256", "prompt_text", "response_text", "signals",
    "version", "observed_at",
)

TOOL_ACTION_FIELDS = (
    "action_id", "tool_call_id", "trace_id", "span_id", "started_at", "ended_at", "tool_name",
    "tool_type", "mcp_server", "mcp_method", "arguments_sha256", "arguments", "executed_by",
    "gate", "gate_decision", "approver", "policy_id", "outcome", "error", "target", "call_id",
    "version", "observed_at",
)

FINDING_FIELDS = (
    "finding_id", "kind", "severity", "subject_ids", "detected_at", "detail",
    "version", "observed_at",
)

METRIC_SAMPLE_FIELDS = (
    "sample_id", "ts", "deployment_id", "metric", "labels", "value", "buckets",
    "version", "observed_at",
)

# One audited span of a trace (agent, model call client or NIM server, tool, MCP client or
# server), as it came: what the trace and session views assemble into a tree. `role` says
# which of those it is; `call_id` names the model call a client or NIM span is a view of
# (a tool or MCP span's action is keyed by its own span id, or by its tool ancestor's).
SPAN_FIELDS = (
    "trace_id", "span_id", "parent_span_id", "started_at", "ended_at", "role", "name",
    "service", "call_id", "conversation_id", "mcp_session_id", "version", "observed_at",
)

FIELDS: dict[str, tuple[str, ...]] = {
    "deployment": DEPLOYMENT_FIELDS,
    "model_call": MODEL_CALL_FIELDS,
    "tool_action": TOOL_ACTION_FIELDS,
    "finding": FINDING_FIELDS,
    "metric_sample": METRIC_SAMPLE_FIELDS,
    "span": SPAN_FIELDS,
}

# The natural key of each kind: re-delivery of the same key and version is a no-op.
KEYS: dict[str, tuple[str, ...]] = {
    "deployment": ("deployment_id", "version"),
    "model_call": ("call_id",),
    "tool_action": ("action_id",),
    "finding": ("finding_id",),
    "metric_sample": ("sample_id",),
    "span": ("trace_id", "span_id"),
}

# Fields that hold content (prompts, responses, tool arguments): kept only where policy says,
# and shown only to roles allowed to see content.
CONTENT_FIELDS = {"prompt_text", "response_text", "arguments"}


def new(kind: str, /, **values: Any) -> dict[str, Any]:
    """A record of `kind` with every field present (None where unknown).

    `kind` is positional-only: a finding has a field named `kind` too."""
    fields = FIELDS[kind]
    unknown = set(values) - set(fields)
    if unknown:
        raise KeyError(f"{kind} has no field(s) {sorted(unknown)}")
    return {f: values.get(f) for f in fields}


def key_of(kind: str, record: dict[str, Any]) -> str:
    return "|".join(str(record[k]) for k in KEYS[kind])


def canonical_bytes(value: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces): what hashes and the ledger use."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def sha256_hex(value: Any) -> str:
    """SHA-256 of a value's canonical form (strings are hashed as their UTF-8 bytes)."""
    data = value.encode() if isinstance(value, str) else canonical_bytes(value)
    return hashlib.sha256(data).hexdigest()


# ---- wire form on the audit topics -----------------------------------------------------
# One Kafka message carries a batch of records of one kind: messages per second, not
# records per second, is what a Python Kafka client pays for.


def encode_batch(kind: str, records: Iterable[dict[str, Any]]) -> bytes:
    return orjson.dumps({"schema": SCHEMA_VERSION, "kind": kind, "records": list(records)})


def decode_batch(value: bytes) -> tuple[str, list[dict[str, Any]]]:
    """Parse an audit message; raises ValueError when it is not one."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") not in FIELDS:
        raise ValueError("not an audit batch: missing or unknown 'kind'")
    if doc.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"unsupported audit schema {doc.get('schema')!r}")
    records = doc.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("'records' must be a list of objects")
    return doc["kind"], records
