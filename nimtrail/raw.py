"""Wire formats of the raw topics the collector writes and the processors read.

All are JSON objects with `schema: 1`. The collector forwards what it received with as
little interpretation as possible, so that a parser fix downstream can replay old input.

nimtrail.raw.nimlogs — key: source. One message is a batch of log lines from one source:
    {"schema": 1, "receiver": "filelog" | "http", "source": "<pod, file or sender>",
     "deployment": "<deployment id or null>", "file": "<path or null>", "host": "<node>",
     "received_at": "<ISO-8601 UTC>",
     "lines": [{"text": "<the line as the container printed it, runtime framing removed>",
                "offset": <byte offset of the line in `file`, or null>,
                "time": "<runtime timestamp (CRI / docker json-file) or null>",
                "stream": "stdout" | "stderr" | null}, ...]}

nimtrail.raw.scrapes — key: target URL. One message is one scrape of one target:
    {"schema": 1, "target": "<url>", "deployment": "<id or null>", "job": "nim" | "dcgm" | ...,
     "scraped_at": "<ISO-8601 UTC>", "up": 1 | 0, "error": "<why up is 0, or null>",
     "duration_ms": <float>,
     "samples": [{"name": "...", "labels": {...}, "value": <float>, "timestamp": <float|null>}, ...]}
    Histogram series arrive as their `_bucket` (with `le`), `_sum` and `_count` samples.

nimtrail.raw.observations — key: deployment id. What a running NIM says about itself:
    {"schema": 1, "deployment": "<id>", "source": "nim-metadata" | "nim-log",
     "endpoint": "<url or log source>", "observed_at": "<ISO-8601 UTC>",
     "facts": {"metadata": {...}, "version": {...}, "models": {...}, "ready": true, ...}}
    For NIM 1.x startup lines (`Selected profile`, `Profile metadata`, `Valid profile`),
    source is "nim-log", facts hold {"profile_id", "profile_name", "profile_tags": {...},
    "valid_profiles": {...}} as parsed, and "lines" names the message that stated each.
    The processor reads this topic back and checks each against the deployment records.

nimtrail.deployments (compacted) — key: "<deployment_id>@<version>" (every version is kept
by compaction; versions are immutable). Value: `records.encode_batch("deployment", [record])`
with one canonical deployment record. Its `identities` field is
    {"k8s": ["<namespace>/<name>", ...],        # k8s.namespace.name + k8s.deployment.name /
                                                 # k8s.statefulset.name
     "pod_prefixes": ["<namespace>/<pod-name-prefix>", ...],
     "service_names": ["<service.name>", ...],
     "host_ports": ["<host>:<port>", ...],        # server.address:server.port seen by clients
     "model_names": ["<served model name>", ...]} # used only where one deployment serves it
"""

from __future__ import annotations

from typing import Any

import orjson

SCHEMA = 1


def encode(doc: dict[str, Any]) -> bytes:
    return orjson.dumps({"schema": SCHEMA, **doc})


def decode(value: bytes, required: tuple[str, ...]) -> dict[str, Any]:
    """Parse a raw-topic message; ValueError names what is wrong."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"unsupported schema {doc.get('schema')!r}")
    missing = [k for k in required if k not in doc]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    return doc


NIMLOGS_REQUIRED = ("source", "received_at", "lines")
SCRAPES_REQUIRED = ("target", "scraped_at", "up", "samples")
OBSERVATIONS_REQUIRED = ("deployment", "source", "observed_at", "facts")
