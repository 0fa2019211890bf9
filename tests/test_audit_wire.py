"""The audit topics' columnar wire form (nimtrail.columnar) against the store that reads it:
the same types, the same rows as the JSON batches it replaces, and both forms readable."""

from __future__ import annotations

import pyarrow as pa
import pytest

from nimtrail import columnar, records
from nimtrail.ops import StageMetrics
from tests.warehouse_data import action, call
from warehouse.ingest import BatchWriter
from warehouse.store import Store
from warehouse.tables import RECORD_TABLES
from warehouse.verify import verify


class _DeadLetters:
    def __init__(self):
        self.sent: list[tuple[bytes, str, str]] = []

    def send(self, value: bytes, *, reason: str, detail: str, **_kw) -> None:
        self.sent.append((value, reason, detail))


def test_the_wire_types_are_the_store_tables_types(tmp_path):
    """One definition each: what the processor writes casts to the warehouse's columns
    without loss because both say the same."""
    store = Store(tmp_path / "audit.duckdb")
    for kind, name in RECORD_TABLES.items():
        stored = store.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? AND column_name <> 'row_hash' ORDER BY ordinal_position", [name]).fetchall()
        assert stored == list(columnar.TYPES[kind].items()), kind
        assert [c for c, _ in stored] == list(records.FIELDS[kind]), kind
    store.close()


def test_records_come_back_as_they_were_sent():
    batch = [call("c1", tool_call_ids=["t1", "t2"], e2e_ms=12.5, input_tokens=2**40),
             call("c2", caller=None, signals=[])]
    kind, back = columnar.records_of(columnar.encode("model_call", batch))
    assert kind == "model_call" and back == batch
    finding = records.new("finding", finding_id="f1", kind="drift", severity="high", subject_ids=["a"],
                          detected_at="2026-01-01T00:00:00.000000Z", detail={"b": [1, {"z": None}], "a": "é"},
                          version=1, observed_at="2026-01-01T00:00:00.000000Z")
    assert columnar.records_of(columnar.encode("finding", [finding])) == ("finding", [finding])
    assert columnar.records_of(records.encode_batch("finding", [finding])) == ("finding", [finding])


def test_large_batches_go_as_columns_and_one_with_a_value_that_fits_no_column_as_json():
    bad = call("c1", input_tokens="many")
    with pytest.raises(columnar.CONVERSION_ERRORS):
        columnar.encode("model_call", [bad])
    batch = [call(f"c{i}") for i in range(columnar.COLUMNAR_FROM)]
    assert columnar.is_columnar(columnar.encode_audit("model_call", batch))
    assert not columnar.is_columnar(columnar.encode_audit("model_call", batch[1:]))  # too few to pay
    value = columnar.encode_audit("model_call", [*batch, bad])
    assert not columnar.is_columnar(value) and records.decode_batch(value) == ("model_call", [*batch, bad])


@pytest.mark.parametrize("value, why", [
    (columnar.encode("model_call", [call("c1")])[:-40], "not an Arrow IPC stream"),
    (columnar.MAGIC + b"\x00" * 12, "not an Arrow IPC stream"),
    (b"", "not JSON"),
])
def test_a_broken_message_is_refused_with_a_reason(value, why):
    with pytest.raises(ValueError, match=why):
        columnar.decode_any(value)


def _columns(kind: str, metadata: dict[bytes, bytes], **arrays) -> bytes:
    table = pa.table(arrays).replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_a_stream_without_an_audit_kind_or_of_another_schema_is_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        columnar.decode(_columns("model_call", {}, call_id=["c1"]))
    with pytest.raises(ValueError, match="unsupported audit schema"):
        columnar.decode(_columns("model_call", {columnar.KIND_KEY: b"model_call", columnar.SCHEMA_KEY: b"9"},
                                 call_id=["c1"]))


def test_both_forms_in_one_poll_store_what_json_alone_stores(tmp_path):
    """A topic holds JSON batches written before the columnar form and columnar ones after
    (an upgrade mid-stream): one poll of both stores the same rows, with the same hashes, as
    the same records sent as JSON only; a column that does not cast sends its message to
    the dead-letter topic and the rest is written."""
    calls = [call(f"c{i}", e2e_ms=i * 1.5, tool_call_ids=[f"t{i}"]) for i in range(200)]
    newer = [{**c, "version": 2, "status": "error"} for c in calls[:50]]
    actions = [action(f"a{i}", call_id=f"c{i}") for i in range(150)]

    def messages(encode):
        return [("audit.calls", encode("model_call", calls[:100])), ("audit.actions", encode("tool_action", actions)),
                ("audit.calls", encode("model_call", calls[100:])), ("audit.calls", encode("model_call", newer))]

    def ingest(path, values, dead_letters):
        store = Store(path)
        writer = BatchWriter(store, StageMetrics("warehouse"), dead_letters)
        writer.write([(topic, 0, offset, value) for offset, (topic, value) in enumerate(values)])
        # every column, row_hash included
        rows = {t: store.con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("model_calls", "tool_actions")}
        report = verify(store.con, path.parent / "no-digests")
        assert report["ok"], report["problems"]
        store.close()
        return rows

    json_only = ingest(tmp_path / "json.duckdb", messages(records.encode_batch), _DeadLetters())
    old, new = messages(records.encode_batch), messages(columnar.encode)
    unfit = _columns("model_call", {columnar.KIND_KEY: b"model_call", columnar.SCHEMA_KEY: b"1"},
                     call_id=["x1"], version=["not a number"])
    dead_letters = _DeadLetters()
    mixed = ingest(tmp_path / "mixed.duckdb", [old[0], new[1], ("audit.calls", unfit), new[2], old[3]], dead_letters)
    assert mixed == json_only
    assert len(json_only["model_calls"]) == 200 and len(json_only["tool_actions"]) == 150
    assert sum("error" in row for row in json_only["model_calls"]) == 50  # the newer versions won
    assert [(value, reason) for value, reason, _ in dead_letters.sent] == [(unfit, "invalid_record")]
