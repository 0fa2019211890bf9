"""The audit topics' wire form: one Arrow IPC stream per message, one record batch of one kind.

The processor writes each batch of canonical records as columns, typed as the warehouse's
tables type them, and the warehouse hands those columns to polars and DuckDB as they are:
no JSON document to parse and no Python dict per record on the way in (a JSON batch cost
the warehouse ~9 µs per record to decode and convert, this form ~3 µs; the processor pays
~2 µs per record to build it instead of ~0.4 µs for JSON).

A message is an Arrow IPC stream (it starts with the stream's continuation marker, where
a JSON batch starts with `{`) whose schema carries the record kind and the schema version
in its metadata. Columns are named as the kind's canonical fields (`records.FIELDS`), in
that order. Values are the canonical record's values: timestamps as their ISO-8601 text,
nested values (TYPES' "JSON") as their canonical JSON text (`records.canonical_bytes`).

The warehouse reads both forms: small batches still travel as JSON (`records.encode_batch`,
see COLUMNAR_FROM), as do batches with a value that fits no column and every message
written before this form.
"""

from __future__ import annotations

import operator
from typing import Any

import orjson
import pyarrow as pa

from nimtrail import records

# An Arrow IPC stream begins with this continuation marker; a JSON batch with "{".
MAGIC = b"\xff\xff\xff\xff"
KIND_KEY, SCHEMA_KEY = b"nimtrail.kind", b"nimtrail.schema"

# The Arrow type of each SQL column type, on the wire and in the warehouse's frames.
ARROW_TYPES = {
    "VARCHAR": pa.string(), "INTEGER": pa.int32(), "BIGINT": pa.int64(), "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(), "TIMESTAMP": pa.string(), "JSON": pa.string(), "VARCHAR[]": pa.list_(pa.string()),
}

# Each kind's fields that are not text, by the SQL type of the warehouse's column (the
# migrations create the tables with these types; a test holds the two together).
_NOT_TEXT: dict[str, dict[str, str]] = {
    "model_call": {"started_at": "TIMESTAMP", "ended_at": "TIMESTAMP", "deployment_version": "INTEGER",
                   "http_status": "INTEGER", "input_tokens": "BIGINT", "output_tokens": "BIGINT",
                   "ttft_ms": "DOUBLE", "e2e_ms": "DOUBLE", "queue_ms": "DOUBLE",
                   "tool_call_ids": "VARCHAR[]", "tool_names": "VARCHAR[]", "signals": "VARCHAR[]"},
    "tool_action": {"started_at": "TIMESTAMP", "ended_at": "TIMESTAMP"},
    "deployment": {"valid_from": "TIMESTAMP", "tensor_parallel": "INTEGER", "pipeline_parallel": "INTEGER",
                   "gpu_count": "INTEGER", "tool_calling_allowed": "BOOLEAN", "allowed_clients": "VARCHAR[]",
                   "tool_servers": "VARCHAR[]", "destructive_tools": "VARCHAR[]",
                   **dict.fromkeys(("lora", "container_config", "env", "api_surface", "health_endpoints",
                                    "logging_mode", "tracing_config", "tool_calling", "deploy_path",
                                    "identities", "field_sources"), "JSON")},
    "finding": {"subject_ids": "VARCHAR[]", "detected_at": "TIMESTAMP", "detail": "JSON"},
    "metric_sample": {"ts": "TIMESTAMP", "value": "DOUBLE", "labels": "JSON", "buckets": "JSON"},
    "span": {"started_at": "TIMESTAMP", "ended_at": "TIMESTAMP"},
}

# kind -> field -> SQL type of its column; every kind has version and observed_at.
TYPES: dict[str, dict[str, str]] = {
    kind: {f: {"version": "INTEGER", "observed_at": "TIMESTAMP"}.get(f) or _NOT_TEXT[kind].get(f, "VARCHAR")
           for f in fields}
    for kind, fields in records.FIELDS.items()
}
JSON_FIELDS = {kind: frozenset(f for f, t in types.items() if t == "JSON") for kind, types in TYPES.items()}
SCHEMAS = {
    kind: pa.schema([(f, ARROW_TYPES[t]) for f, t in types.items()],
                    metadata={KIND_KEY: kind.encode(), SCHEMA_KEY: str(records.SCHEMA_VERSION).encode()})
    for kind, types in TYPES.items()
}
_GETTERS = {kind: operator.itemgetter(*fields) for kind, fields in records.FIELDS.items()}

# Batches smaller than this travel as JSON. A columnar message costs the processor ~80–190 µs
# whatever its size (an Arrow array per field, the stream's schema) and the warehouse about
# as much to read: per record, columns cost processor and warehouse together more than JSON
# below ~100 records and less above (model calls at 512 per message: 6.8 µs against 8.8 µs;
# docs/warehouse.md, "The audit topics' wire form").
COLUMNAR_FROM = 128

# What pyarrow raises for values that do not fit a column's type.
CONVERSION_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)


def encode(kind: str, batch: list[dict[str, Any]]) -> bytes:
    """Records of `kind` as one message; raises one of CONVERSION_ERRORS when a value does
    not fit its column (`encode_audit` then sends the batch as JSON)."""
    fields, schema = records.FIELDS[kind], SCHEMAS[kind]
    if not batch:
        columns: list[Any] = [[] for _ in fields]
    else:
        try:  # every record carries every field (records.new): one C call per record
            columns = list(zip(*map(_GETTERS[kind], batch)))
        except KeyError:
            columns = [[r.get(f) for r in batch] for f in fields]
    canonical = records.canonical_bytes
    arrays = []
    for field, values, type_ in zip(fields, columns, schema.types):
        if field in JSON_FIELDS[kind]:
            values = [None if v is None else canonical(v).decode() for v in values]
        arrays.append(pa.array(values, type=type_))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return sink.getvalue().to_pybytes()


def encode_audit(kind: str, batch: list[dict[str, Any]]) -> bytes:
    """The message the processor sends for `batch`: columns from COLUMNAR_FROM records up,
    a JSON batch below that (where a message's fixed cost outweighs what columns save) or
    when a value does not fit its column (the warehouse then finds the record it cannot
    store and sends that message to the dead-letter topic, with the reason, as it does for
    any record it refuses)."""
    if len(batch) >= COLUMNAR_FROM:
        try:
            return encode(kind, batch)
        except CONVERSION_ERRORS:
            pass
    return records.encode_batch(kind, batch)


def is_columnar(value: bytes) -> bool:
    return value[:4] == MAGIC


def decode(value: bytes) -> tuple[str, pa.Table]:
    """An audit message in this form -> (kind, its columns as sent); raises ValueError
    when it is not one. The columns are not checked against TYPES here: the warehouse
    casts them to its tables' types, and refuses what does not cast."""
    try:
        table = pa.ipc.open_stream(value).read_all()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise ValueError(f"not an Arrow IPC stream: {e}") from e
    metadata = table.schema.metadata or {}
    kind = metadata.get(KIND_KEY, b"").decode("utf-8", "replace")
    if kind not in records.FIELDS:
        raise ValueError(f"not an audit batch: missing or unknown kind {kind!r}")
    schema = metadata.get(SCHEMA_KEY, b"").decode("utf-8", "replace")
    if schema != str(records.SCHEMA_VERSION):
        raise ValueError(f"unsupported audit schema {schema!r}")
    return kind, table


def decode_any(value: bytes) -> tuple[str, list[dict[str, Any]] | pa.Table]:
    """An audit message of either form -> (kind, its records or its columns)."""
    return decode(value) if is_columnar(value) else records.decode_batch(value)


def records_of(value: bytes) -> tuple[str, list[dict[str, Any]]]:
    """An audit message of either form -> (kind, its records as dicts, nested values parsed),
    for the few places that need records one by one (re-splitting a refused batch, tests)."""
    kind, batch = decode_any(value)
    if isinstance(batch, list):
        return kind, batch
    rows = batch.to_pylist()
    for field in JSON_FIELDS[kind] & set(batch.column_names):
        for row in rows:
            if row[field] is not None:
                row[field] = orjson.loads(row[field])
    return kind, rows
